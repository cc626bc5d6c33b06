"""`newsvendor`: the fleet that minimizes machine cost plus the expected downtime penalty, priced on the group's
own recent rises. A rule: it is derived from the business objective, nothing in it was learned or tuned on a load.

Each minute, for each group, the scenarios are the load now plus each bin of the group's tail of rises over the
warm-up horizon (`policies.rise_tail`: the rises of the last days as shares of the hour's largest load), weighted
by how often such a rise came. A fleet of C machines then costs

    machine cost x C  +  downtime penalty x sum over scenarios of P(scenario) x P(down | scenario load, C)

where P(down) comes from the per-machine capacity noise (normal, `capacity_sigma_share` of the capacity): a minute
is down when the fleet's capacity is below `downtime_served_share` of the load. The candidates are the fleets that
cover each scenario at 0, 1.5 and 3 standard deviations of the capacity noise; the cheapest wins. With the seed's
prices (a downtime minute costs as much as 4,000 machine-minutes) a rise seen once in a few days is still worth
covering unless it needs many machines; on a calm load the tail is short and the fleet runs hot.

`rise_scale` says what a rise scales with (`policies.rise_tail`): the hour's largest load ("hour", the default:
a burst multiplies the recent level), the daily maximum ("day": a burst adds about as much at any hour), or
"mixture": both hypotheses priced, each with half the probability, which a load of either kind can live with.

`risk` multiplies the downtime penalty (2: twice as averse); the learned policy's `newsvendor` action mapping
picks it per minute. Before `MIN_MINUTES` minutes of rises the rule holds `cold_utilization`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleetpilot.policies.base import MIN_UTILIZATION, Policy, PolicyOutput, saturated_machines, toward
from fleetpilot.policies.downtime import downtime_probability
from fleetpilot.policies.observation import Observation
from fleetpilot.policies.rise_tail import SCALE_MINUTES, UPPER

#: Minutes of recorded rises (decayed mass) before the tail is trusted.
MIN_MINUTES = 60
#: The load the rule sizes from: the larger of the last minute's and the mean of this many (a single low
#: reading does not shrink the fleet).
BASE_MINUTES = 3
#: Groups priced at once (memory: about 0.1 MB per group).
_CHUNK = 256
#: Standard deviations of the capacity noise each scenario is covered at, as candidates.
_Z = np.array([0.0, 1.5, 3.0])
#: Beyond this many standard deviations of the capacity noise, P(down) is taken as exactly 0 or 1.
_Z_BAND = 8.5


class NewsvendorParams(BaseModel):
    """The business objective (the seed's prices by default: `sim.params.FleetParams`), not tuned knobs."""

    model_config = ConfigDict(extra="forbid")
    machine_cost_usd_per_minute: float = Field(0.05, gt=0, description="cost of one active machine per minute")
    downtime_cost_usd_per_minute: float = Field(200.0, ge=0, description="penalty for a minute of downtime")
    capacity_sigma_share: float = Field(
        0.1, ge=0, lt=1, description="std. dev. of a machine's capacity per minute, as a share of its mean"
    )
    downtime_served_share: float = Field(0.995, gt=0, le=1, description="a minute is down below this served share")
    risk: float = Field(1.0, gt=0, le=1000, description="multiplies the downtime penalty")
    cold_utilization: float = Field(
        0.5, ge=MIN_UTILIZATION, le=1, description="load / capacity held until the group has rises to price"
    )
    rise_scale: Literal["hour", "day", "mixture"] = Field(
        "hour",
        description="what a rise scales with: the hour's largest load, the daily maximum, or both, half each"
        " (policies.rise_tail)",
    )


def newsvendor_machines(
    obs: Observation, p: NewsvendorParams, risk: np.ndarray | float = 1.0, rows: np.ndarray | None = None
) -> np.ndarray:
    """(R,) float machines: the cheapest candidate fleet of each group of `rows` (all when None; module
    docstring); `risk` (scalar or (R,)) multiplies the downtime penalty on top of `p.risk`. Groups without enough
    rises: the cold utilization. The load it sizes from is the larger of the last minute's and the mean of the
    last `BASE_MINUTES`, so one low (or zero) reading does not shrink the fleet."""
    idx = np.arange(obs.n) if rows is None else np.asarray(rows, dtype=np.int64)
    x = np.asarray(obs.load_tpm, dtype=np.float64)[idx]
    cap = np.broadcast_to(np.asarray(obs.capacity_tpm_per_machine, dtype=np.float64), (obs.n,))[idx]
    base = np.maximum(x, obs.history.window_mean(0, BASE_MINUTES - 1)[idx])
    out = base / (cap * p.cold_utilization)
    if obs.rise is None or idx.size == 0:
        return out
    warm = obs.rise.mass[idx] >= MIN_MINUTES
    if not warm.any():
        return out
    w = idx[warm]
    parts = []  # (scenario probabilities, scale) of each hypothesis priced, (W, B) and (W,)
    if p.rise_scale != "day":
        hour = np.maximum(obs.history.lags(0, SCALE_MINUTES - 1).max(axis=1)[w].astype(np.float64), 1.0)
        parts.append((obs.rise.probabilities(w), hour))
    if p.rise_scale != "hour":
        day_max = obs.day_max_tpm if obs.day_max_tpm is not None else obs.load_tpm
        day = np.maximum(np.asarray(day_max, dtype=np.float64)[w], 1.0)
        parts.append((obs.rise.probabilities(w, day=True), day))
    probs = np.concatenate([q / len(parts) for q, _ in parts], axis=1)  # (W, B x hypotheses)
    b0 = base[warm][:, None]
    loads = np.concatenate([b0 + UPPER[None, :] * sc[:, None] for _, sc in parts], axis=1)  # scenario loads
    c = cap[warm]
    sd = p.capacity_sigma_share * c
    need = p.downtime_served_share * loads  # the capacity each scenario needs to be up
    penalty = p.downtime_cost_usd_per_minute * p.risk * np.broadcast_to(np.asarray(risk, dtype=np.float64), x.shape)
    penalty = penalty[warm]
    # candidates: cover each scenario at each z of the capacity noise, (W, BINS x Z), all priced at once for a
    # chunk of groups at a time: (chunk, candidates, scenarios) arrays of a few MB
    per_machine = np.maximum(c[:, None] - _Z[None, :] * sd[:, None], 1e-9)  # (W, Z)
    best = np.empty(w.size)
    noisy = bool((sd > 0).all())
    if noisy:
        from scipy.special import ndtr  # here, not at module level: a daemon of other policies never needs it

        thresh = np.ceil(p.downtime_served_share * loads - 1e-9)  # down below this many transactions served
    chunk = _CHUNK // len(parts) ** 2  # candidates and scenarios both grow with the hypotheses
    for lo in range(0, w.size, chunk):
        g = slice(lo, lo + chunk)
        fleet = _distinct(
            np.maximum(np.ceil(need[g, :, None] / per_machine[g, None, :]), 1.0).reshape(need[g].shape[0], -1)
        )
        if noisy:  # downtime_probability's formula, fused: every fleet >= 1 machine, every scenario load > 0
            z = np.matmul((1.0 / (fleet * sd[g, None]))[:, :, None], thresh[g, None, :])
            z -= (c[g] / sd[g])[:, None, None]
            # only where the capacity noise decides: beyond 8.5 standard deviations P(down) is 0 or 1 to within
            # 1e-17, and most (fleet, scenario) pairs are that far apart
            band = np.abs(z) < _Z_BAND
            p_down = (z > 0).astype(np.float64)
            p_down[band] = ndtr(z[band])  # (chunk, candidates, scenarios)
        else:
            p_down = downtime_probability(
                fleet[:, :, None], loads[g, None, :], c[g, None, None], sd[g, None, None], p.downtime_served_share
            )
        cost = p.machine_cost_usd_per_minute * fleet + penalty[g, None] * np.matmul(p_down, probs[g, :, None])[..., 0]
        best[g] = fleet[np.arange(fleet.shape[0]), np.argmin(cost, axis=1)]
    out[warm] = best
    return out


def _distinct(fleet: np.ndarray) -> np.ndarray:
    """(R, K) candidate fleets -> (R, K') the same candidates, sorted, each distinct value once in the first
    columns; K' is the most distinct values of any row, and a row with fewer repeats its largest value after them
    (many scenarios round to the same fleet: pricing each distinct fleet once is what costs the time)."""
    fleet = np.sort(fleet, axis=1)
    repeat = np.zeros(fleet.shape, dtype=bool)
    repeat[:, 1:] = fleet[:, 1:] == fleet[:, :-1]
    k = int((~repeat).sum(axis=1).max(initial=0))
    order = np.argsort(repeat, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(fleet, order, axis=1)
    # a row's padding (its repeats) becomes its largest value: the same candidate again, priced the same
    n_distinct = (~repeat).sum(axis=1)
    pad = np.arange(k)[None, :] >= n_distinct[:, None]
    return np.where(pad, fleet[:, -1:], out)


class NewsvendorPolicy(Policy):
    name = "newsvendor"

    def __init__(self, params: NewsvendorParams | None = None):
        self.params = params or NewsvendorParams()

    def reset(self, n: int) -> None:
        pass

    def decide(self, obs: Observation) -> PolicyOutput:
        desired = toward(saturated_machines(newsvendor_machines(obs, self.params)), obs)
        return PolicyOutput(desired, desired)
