"""Rollout policy iteration: the training method `PPOConfig.method = "rollout-pi"` (classification-based
approximate policy iteration, after Lagoudakis & Parr 2003 and Lazaric et al. 2010).

PPO learns the value of an action from one sampled trajectory per state: with a $200 downtime minute against
$0.05 machine-minutes and a 5-minute warm-up between a decision and its effect, the advantage of one of a few
sane actions drowns in the load's noise, and PPO never moved off its starting rule. The simulator is cheap
and, with the expected reward, deterministic given the load, so each action's value can be measured instead:

1. **Roll out.** Each training load is replayed by K + 1 fleets side by side (`segment_rollouts`): one runs the
   current policy throughout; fleet k holds action k for the first `pi_hold_minutes` of every
   `pi_period_minutes` and runs the current policy otherwise. Every fleet sees the same load and capacity
   noise, so the difference of fleet k's expected reward over a period and the policy's own is that action's
   advantage in the state the period started from, without sampling noise (common random numbers). The rest
   of the period lets the fleets converge again, so the next period starts from (nearly) the same state.
2. **Improve.** The actor is fit to those advantages (`fit_actor`): it minimizes its expected regret, the
   probability it gives each action times how much less that action earned than the best one, in shares of
   the period's revenue at full service (scale-free: a small group counts as much as a big one).
3. **Validate** the new actor on the validation runs and keep the best (update 0: the starting rule), then
   roll out again under the new policy.

Which pass of the fit is kept is judged on data the fit did not learn from (`pi_holdout`): every fourth load
("loads"), or, for a mixture of sources, each source in turn ("sources": the fit is repeated without it and
judged on it, and a pass is kept only if it made no source it did not see worse). The second asks the question
a load the policy never saw asks (README: on the development traces, hardly any pass passed it).

Every step is the business objective measured in the simulator; nothing here is tuned to a load. The action
set is the policy's `ActionMapping` (for the shipped recipe: the `newsvendor` rule at several prices of risk).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fleetpilot.policies.actions import ActionMapping
from fleetpilot.policies.base import toward_machines
from fleetpilot.policies.observation import Observation, ObservationBuilder
from fleetpilot.sim.fleet import FleetCore, expected_reward
from fleetpilot.sim.params import FleetParams


def first_period_minute(skip: int, period: int) -> int:
    """The minute the first kept period starts: the first period boundary at or after `skip`."""
    return -(-skip // period) * period


def periods_kept(episode: int, skip: int, period: int) -> int:
    """How many periods `segment_rollouts` keeps of an episode of `episode` minutes."""
    return max(episode // period - first_period_minute(skip, period) // period, 0)


@dataclass
class Segments:
    """What one round of rollouts measured: per period, the state it started from and each action's advantage."""

    features: np.ndarray
    """(M, OBS_DIM) float32: the policy's observation at the start of each period"""
    advantage: np.ndarray
    """(M, K) each action's expected reward over the period minus the policy's own, as a share of the load's
    mean revenue per period at full service"""
    load: np.ndarray
    """(M,) which training load each period comes from"""
    source: np.ndarray | None = None
    """(M,) which source (mixture component: a trace or the generator) each period's load was drawn from"""


def segment_rollouts(
    actions,
    mapping: ActionMapping,
    loads: np.ndarray,
    starts: np.ndarray,
    keys: np.ndarray,
    fleet: FleetParams,
    hold: int,
    period: int,
    skip: int,
    sources: np.ndarray | None = None,
) -> Segments:
    """Step 1 of the module docstring on `loads` (N, T + 1). `actions(features)` is the current policy: (R, OBS_DIM)
    observation features of R fleets -> (R,) action indices. Periods starting before minute `skip` (the
    observation's history is still filling) are not kept. `sources` (N,) names where each load was drawn from
    (default: one source)."""
    n, t_len = loads.shape[0], loads.shape[1] - 1
    source = np.zeros(n, dtype=np.int64) if sources is None else np.asarray(sources)
    if source.shape != (n,):
        raise ValueError(f"sources: {source.shape[0] if source.ndim else 0} given for {n} loads")
    k_n = mapping.n
    width = k_n + 1  # fleet 0 of each load: the policy itself; fleet 1 + k: holds action k
    load = np.asarray(loads, dtype=np.float64)
    start = np.asarray(starts, dtype=np.int64)
    held_rows = np.repeat(np.arange(k_n)[:, None], n, axis=1)  # (K, n): what fleets 1..K hold
    # one observation builder for the loads, one fleet core of width x n fleets (fleet j of load i: row j x n + i,
    # the same capacity noise for each load's fleets), as `training.backtest.simulate_many` replays policies
    core = FleetCore(width * n, fleet)
    core.reset(slice(None), np.tile(np.asarray(keys, dtype=np.uint64), width))
    parts = [slice(j * n, (j + 1) * n) for j in range(width)]
    builder = ObservationBuilder(n, fleet.capacity_tpm_per_machine, fleet.warmup_minutes)
    builder.update(load[:, 0], core.active[:n], core.warming[:n], start)
    lo, hi = -fleet.max_scale_in_per_minute, fleet.max_scale_out_per_minute
    first = first_period_minute(skip, period) // period
    kept = periods_kept(t_len, skip, period)
    periods = first + kept
    feats = np.zeros((n, kept, 0), dtype=np.float32)
    reward = np.zeros((width, n, kept))
    served = np.zeros((n, kept))
    for t in range(1, periods * period + 1):
        warming = core.warming
        obs: list[Observation] = builder.observations([(core.active[s], warming[s]) for s in parts])
        s, phase = divmod(t - 1, period)
        j = s - first
        if phase == 0 and j >= 0:
            f = obs[0].features
            if feats.shape[2] == 0:
                feats = np.zeros((n, kept, f.shape[1]), dtype=np.float32)
            feats[:, j] = f
        if phase < hold:  # fleets 1..K hold their actions: only the policy's own fleet asks it
            k = np.concatenate([np.asarray(actions(obs[0].features), dtype=np.int64)[None], held_rows])
        else:
            k = np.asarray(actions(np.concatenate([o.features for o in obs])), dtype=np.int64).reshape(width, n)
        target = mapping.targets(k, obs[0]).reshape(-1)  # a target reads the load only (any fleet's obs)
        desired = toward_machines(target, core.active, warming)
        delta = np.clip(desired - (core.active + warming), lo, hi)
        out = core.step(delta, np.tile(load[:, t], width))
        builder.update(load[:, t], out.active[:n], core.warming[:n], start + t)
        if j >= 0:
            reward[:, :, j] += expected_reward(out.active, np.tile(load[:, t], width), fleet).reshape(width, n)
            served[:, j] += load[:, t] * fleet.revenue_usd_per_1k_transactions / 1000.0
    r = reward.transpose(1, 0, 2)  # (n, width, kept)
    # in shares of the load's mean revenue per period at full service: scale-free, and a quiet period's
    # advantage stays in dollars of its load (a period with no load would otherwise divide by zero)
    scale = np.maximum(served.mean(axis=1), 1e-6)[:, None, None]
    adv = (r[:, 1:, :] - r[:, :1, :]) / scale  # (n, K, kept)
    return Segments(
        feats.reshape(n * kept, -1),
        adv.transpose(0, 2, 1).reshape(n * kept, k_n),
        np.repeat(np.arange(n), kept),
        np.repeat(source, kept),
    )


@dataclass
class Fit:
    """What `fit_actor` did, in shares of a period's revenue: `regret`, its argmax's mean regret on the periods
    it learned from (holdout "sources": all periods, the final fit); `holdout_regret`, at the kept pass, on
    periods it did not learn from: the held-out loads (holdout "loads"), or the mean over sources of what a fit
    without each source left on that source (holdout "sources"); `holdout_regret_before`, the same for the
    actor it started from."""

    regret: float
    holdout_regret: float
    holdout_regret_before: float
    epoch: int
    """the pass whose actor was kept (0: the actor it started from)"""
    holdout: str = "loads"
    """what the kept pass was judged on: "loads" or "sources" ("sources" asked for in a round that drew a single
    source: "loads")"""
    source_change: dict[str, float] | None = None
    """holdout "sources": per source, how a fit without it changed its regret on it (> 0: worse), at the kept
    pass, or, when none was kept, after the last pass: what stopped it"""
    source_change_pass: int | None = None
    """the pass `source_change` is measured at"""


def _regret(seg: Segments) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(seg.features)
    adv = torch.from_numpy(seg.advantage).float()
    return x, adv.max(dim=1, keepdim=True).values - adv  # >= 0; 0 for the best action of each period


def _argmax_regret(actor: nn.Module, x: torch.Tensor, regret: torch.Tensor, rows: torch.Tensor) -> float:
    with torch.no_grad():
        pick = torch.argmax(actor(x[rows]), dim=-1)
    return float(regret[rows].gather(1, pick[:, None]).mean())


def _passes(actor, x, regret, learn, epochs, lr, gen, minibatch, weight_decay, after_pass) -> None:
    """`epochs` passes of Adam on the expected regret of the rows `learn`; `after_pass(epoch)` after each."""
    opt = torch.optim.Adam(actor.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(1, epochs + 1):
        perm = learn[torch.randperm(learn.shape[0], generator=gen)]
        for s in range(0, perm.shape[0], minibatch):
            i = perm[s : s + minibatch]
            loss = (torch.softmax(actor(x[i]), dim=-1) * regret[i]).sum(dim=-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        after_pass(epoch)


def fit_actor(
    actor: nn.Module,
    seg: Segments,
    epochs: int,
    lr: float,
    gen: torch.Generator,
    minibatch: int = 256,
    weight_decay: float = 0.0,
    holdout_every: int = 4,
    holdout: str = "loads",
) -> Fit:
    """Step 2: minimize the actor's expected regret (Adam, up to `epochs` passes). Which pass is kept, the
    starting actor (pass 0) included, is judged on periods the fit did not learn from (a fit that does not
    generalize changes nothing):
    - holdout "loads": the fit learns from all loads but every `holdout_every`-th and keeps the pass whose
      argmax has the least regret on those;
    - holdout "sources" (`seg.source` names at least two): for each source, the fit is run from the starting
      actor on the other sources and its regret on that source recorded pass by pass. The pass count kept is
      the one with the least mean change of regret over the sources among those that made no source worse
      (none: 0, the starting actor); the actor is then fit on all periods for that many passes."""
    if holdout not in ("loads", "sources"):
        raise ValueError(f"holdout {holdout!r}: expected loads or sources")
    x, regret = _regret(seg)
    source = np.zeros(len(seg.load), dtype=np.int64) if seg.source is None else np.asarray(seg.source)
    names = list(dict.fromkeys(source.tolist()))
    if holdout == "sources" and len(names) > 1:
        return _fit_by_sources(actor, x, regret, source, names, epochs, lr, gen, minibatch, weight_decay)
    held = torch.from_numpy(seg.load % holdout_every == holdout_every - 1)
    if not held.any() or held.all():  # too few loads to hold any out: judge on all of them
        held = torch.ones_like(held)
    learn = torch.nonzero(~held if not held.all() else held).squeeze(1)
    check = torch.nonzero(held).squeeze(1)
    before = _argmax_regret(actor, x, regret, check)
    best_regret, best_epoch, best_state = before, 0, copy.deepcopy(actor.state_dict())

    def keep_best(epoch: int) -> None:
        nonlocal best_regret, best_epoch, best_state
        h = _argmax_regret(actor, x, regret, check)
        if h < best_regret:
            best_regret, best_epoch, best_state = h, epoch, copy.deepcopy(actor.state_dict())

    _passes(actor, x, regret, learn, epochs, lr, gen, minibatch, weight_decay, keep_best)
    actor.load_state_dict(best_state)
    return Fit(_argmax_regret(actor, x, regret, learn), best_regret, before, best_epoch)


def _fit_by_sources(actor, x, regret, source, names, epochs, lr, gen, minibatch, weight_decay) -> Fit:
    """holdout "sources" of `fit_actor`."""
    start = copy.deepcopy(actor.state_dict())
    curves = np.zeros((len(names), epochs + 1))  # regret on each source, after each pass of a fit without it
    for j, name in enumerate(names):
        actor.load_state_dict(start)
        out = torch.from_numpy(np.nonzero(source == name)[0])
        learn = torch.from_numpy(np.nonzero(source != name)[0])
        curves[j, 0] = _argmax_regret(actor, x, regret, out)

        def record(epoch: int, j: int = j, out: torch.Tensor = out) -> None:
            curves[j, epoch] = _argmax_regret(actor, x, regret, out)

        _passes(actor, x, regret, learn, epochs, lr, gen, minibatch, weight_decay, record)
    change = curves - curves[:, :1]
    score = np.where(change.max(axis=0) <= 0.0, change.mean(axis=0), np.inf)
    score[0] = 0.0
    kept = int(np.argmin(score))  # the first pass of the least mean change; 0 unless a pass improved
    near = kept or epochs  # where the fit ended up, when no pass was kept
    actor.load_state_dict(start)
    _passes(actor, x, regret, torch.arange(x.shape[0]), kept, lr, gen, minibatch, weight_decay, lambda e: None)
    return Fit(
        _argmax_regret(actor, x, regret, torch.arange(x.shape[0])),
        float(curves[:, kept].mean()),
        float(curves[:, 0].mean()),
        kept,
        "sources",
        {str(name): round(float(change[j, near]), 6) for j, name in enumerate(names)},
        near,
    )
