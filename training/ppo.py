"""PPO in torch, CleanRL style: one file, a dataclass of hyperparameters, preallocated buffers, explicit GAE.

The agent sees the features of the one observation builder and picks a discrete action of the policy's
`ActionMapping` (a utilization target and a cushion); the mapping turns it into a desired capacity, and the
env applies the step limits. Training runs on the numpy vector env (`WebFleetVectorEnv`).

`PPOConfig.method = "rollout-pi"` replaces the PPO updates by rollout policy iteration
(`training.policy_iteration`): the same start, validation, keep-best, checkpoint and export.

`train` reads top to bottom: seeding (one `torch.Generator`; numpy draws from generators seeded from the
config, never the global RNG), a start (`resume_run` from a `Checkpoint`, or `start_from_rule`: choose a
rule and imitate it), then per update `collect_rollout`, `compute_gae`, `ppo_update`, validation with
`KeepBest`, progress and a checkpoint; finally the learning curve and a `TrainResult`.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fleetpilot.policies.actions import ActionMapping
from fleetpilot.policies.base import PolicyOutput
from fleetpilot.policies.cushion import RuleActions
from fleetpilot.policies.errors import UserError
from fleetpilot.policies.observation import FEATURE_NAMES, OBS_DIM, Observation
from fleetpilot.policies.rise_tail import TAIL_VERSION
from fleetpilot.sim.params import FleetParams
from fleetpilot.training.backtest import backtest, synthetic_run
from fleetpilot.training.env import LoadSampler, WebFleetVectorEnv
from fleetpilot.training.progress import Progress

SQRT2 = math.sqrt(2)  #: orthogonal init gain of the hidden layers (CleanRL)


@dataclass
class PPOConfig:
    total_steps: int = 8_000_000
    """fleet-minutes of experience to collect in total"""
    num_envs: int = 256
    """fleets simulated in parallel"""
    num_steps: int = 128
    """minutes per fleet in one rollout (batch = num_envs x num_steps)"""
    episode_minutes: int = 10_000
    """minutes per training episode (the seed's 10,000)"""
    gamma: float = 0.95
    """discount per minute (the effects of a decision play out within about the warm-up and a spike)"""
    gae_lambda: float = 0.9
    """GAE lambda"""
    learning_rate: float = 1e-4
    """Adam learning rate (annealed linearly to 0)"""
    update_epochs: int = 4
    """passes over each batch"""
    num_minibatches: int = 4
    """minibatches per pass"""
    clip_coef: float = 0.2
    """PPO ratio clip"""
    ent_coef: float = 0.0
    """entropy bonus (with 100 near-equivalent actions any bonus outweighs their differences and drives the
    policy towards uniform: 0.003 ended at entropy 3.6 of at most 4.6 and a worse rule)"""
    vf_coef: float = 0.5
    """value-loss weight"""
    max_grad_norm: float = 0.5
    """gradient clipping"""
    reward_scale: float = 0.05
    """rewards (US dollars per minute) are multiplied by this"""
    expected_reward: bool = True
    """learn from the expected reward over the capacity noise (the backtest's objective; lower variance)"""
    downtime_cost_usd_per_minute: float | None = 300.0
    """the downtime penalty training optimizes (None: the simulator's $200). Above $200 the policy buys
    fewer downtime minutes with a little profit; validation and every backtest use the simulator's penalty"""
    hidden: int = 64
    """units in each of the two hidden layers"""
    init_action: str = "auto"
    """the starting rule's main action: "auto" = the grid action that earns most as a fixed rule on training
    loads (`choose_start_rule`), "U,C" (utilization, cushion) or "risk=R" (the mapping's newsvendor action of
    risk R: the `newsvendor` rule, priced with R x the downtime penalty)"""
    init_jump_window_minutes: int = 95
    """the starting rule takes its jump action for this many minutes after a detected load jump (observation
    feature `jump_age`); 0: no jump action"""
    init_jump_quiet_minutes: int = 4320
    """the jump window applies only when the load has not re-risen soon after a jump for this many minutes
    (observation feature `rerise_age`; see `policies.cushion`)"""
    init_jump_action: str = "auto"
    """the jump action: "auto" = the grid action that earns most in jump windows (the main action fixed
    elsewhere) on the same training loads, which may be the main action itself; or "U,C" (utilization, cushion)"""
    init_loads: int = 32
    """training loads (episodes) on which "auto" compares the rules; the starting rule is imitated on them"""
    imitation_epochs: int = 6
    """passes of supervised learning (cross-entropy) of the actor on the starting rule's decisions: PPO starts
    from a network that already acts as that rule"""
    imitation_lr: float = 3e-3
    """Adam learning rate of the imitation"""
    imitation_smoothing: float = 0.0
    """label smoothing of the imitation: the imitated actor puts this share of its probability evenly on all
    actions, so PPO's sampled rollouts try the others from the start (its argmax is still the rule's)"""
    keep_best: bool = True
    """export the actor with the best validation score seen, the imitated starting rule (update 0) included,
    instead of the last one: PPO may also make the policy worse"""
    seed: int = 1
    """seeds torch and the envs: the same seed gives the same model"""
    eval_every_updates: int = 50
    """updates between validation backtests"""
    eval_minutes: int = 10_000
    """minutes per validation run"""
    eval_seeds: tuple[int, ...] = (500, 501, 502)
    """synthetic validation seeds (training never sees them; evaluation uses 1000+ and 2000+)"""
    threads: int = 1
    """torch CPU threads. With 1 the same seed gives the same bytes on every run; with more, torch's parallel
    reductions may round differently from run to run (about 1 run in 30 on 2 cores), and the model drifts"""
    mapping: dict = field(default_factory=lambda: ActionMapping().to_json())
    """the action mapping (see policies.actions)"""
    method: str = "ppo"
    """after imitating the starting rule: "ppo", or "rollout-pi" (rollout policy iteration,
    `training.policy_iteration`: each action's advantage measured by replaying the same load with it)"""
    pi_iterations: int = 3
    """rollout-pi: rounds of roll out, fit, validate (0: the imitated starting rule is exported)"""
    pi_loads: int = 48
    """rollout-pi: training loads per round, each `episode_minutes` long"""
    pi_hold_minutes: int = 30
    """rollout-pi: minutes an action is held at the start of each period"""
    pi_period_minutes: int = 60
    """rollout-pi: minutes over which a held action's advantage is counted (the hold, then the fleets converge)"""
    pi_skip_minutes: int = 1440
    """rollout-pi: minutes of each load observed before the first period is kept (the history fills)"""
    pi_epochs: int = 20
    """rollout-pi: passes of the actor over each round's periods"""
    pi_learning_rate: float = 1e-3
    """rollout-pi: Adam learning rate of the fit"""
    pi_holdout: str = "loads"
    """rollout-pi: what the fit's kept pass is judged on (`policy_iteration.fit_actor`): "loads" (every fourth
    training load) or "sources" (each source, a trace or the generator, left out of the fit in turn: a pass is
    kept only if it made no source it did not see worse; a round that drew a single source falls back to
    "loads", and its log row says so)"""
    actor_features: list[str] = field(default_factory=list)
    """the observation features the actor reads, by name (`policies.observation.FEATURE_NAMES`; empty: all).
    The others' first-layer weights are zero and stay zero (their gradient is masked), so the exported network
    takes the whole observation and ignores them; the critic reads everything"""


def _layer(i: int, o: int, std: float, generator: torch.Generator | None) -> nn.Linear:
    """A linear layer with orthogonal weights (gain `std`) and zero biases, drawn from `generator`
    (None: torch's global RNG)."""
    lin = nn.utils.skip_init(nn.Linear, i, o)
    # First nn.Linear's own initialization, from the same generator: it is overwritten just below, but its
    # draws advance the generator exactly as `nn.Linear(i, o)` advances the global RNG, so a seed gives the
    # same network as before the generator was explicit (the shipped models were trained that way).
    nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=generator)
    nn.init.uniform_(lin.bias, -1 / math.sqrt(i), 1 / math.sqrt(i), generator=generator)
    nn.init.orthogonal_(lin.weight, std, generator=generator)
    nn.init.zeros_(lin.bias)
    return lin


class Agent(nn.Module):
    def __init__(
        self,
        n_actions: int,
        hidden: int = 64,
        generator: torch.Generator | None = None,
        reads: list[str] | tuple[str, ...] = (),
    ):
        """`reads`: the features the actor reads (`PPOConfig.actor_features`; empty: all)."""
        super().__init__()

        def layer(i: int, o: int, std: float = SQRT2) -> nn.Linear:
            return _layer(i, o, std, generator)

        self.actor = nn.Sequential(
            layer(OBS_DIM, hidden), nn.Tanh(), layer(hidden, hidden), nn.Tanh(), layer(hidden, n_actions, 0.01)
        )
        self.critic = nn.Sequential(
            layer(OBS_DIM, hidden), nn.Tanh(), layer(hidden, hidden), nn.Tanh(), layer(hidden, 1, 1.0)
        )
        #: (OBS_DIM,) bool, the features the actor reads
        self.keep = torch.tensor([not reads or name in reads for name in FEATURE_NAMES])
        if reads:
            first = self.actor[0].weight
            assert isinstance(first, torch.Tensor)
            with torch.no_grad():
                first.mul_(self.keep)
            # a zero gradient leaves Adam's moments, and so the weight, at zero: the columns stay zero through
            # imitation, PPO and every fit (where, not a product: a non-finite gradient stays out of them too).
            # A copy of the module does not keep the hook: `masked` is checked at resume and at export
            keep = self.keep
            first.register_hook(lambda grad: torch.where(keep, grad, torch.zeros_like(grad)))

    def masked(self) -> bool:
        """Whether the actor's first layer ignores every feature it does not read (True when it reads all)."""
        first = self.actor[0].weight
        assert isinstance(first, torch.Tensor)
        return bool((first[:, ~self.keep] == 0).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic action (argmax of the logits): what is exported to ONNX."""
        return torch.argmax(self.actor(x), dim=-1)


class TorchPolicy:
    """A Policy over a torch Agent (training-time evaluation; serving uses the ONNX export)."""

    def __init__(self, agent: Agent, mapping: ActionMapping, name: str = "ppo"):
        self.agent, self.mapping, self.name = agent, mapping, name

    def reset(self, n: int) -> None:
        pass

    @torch.no_grad()
    def decide(self, obs: Observation) -> PolicyOutput:
        k = self.agent(torch.from_numpy(obs.features)).numpy()
        return PolicyOutput(self.mapping.desired(k, obs), k.astype(np.int64))


def _draw_loads(
    fleet: FleetParams,
    sampler: LoadSampler | None,
    seed: int,
    n_loads: int,
    minutes: int,
    sources: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(n_loads, minutes + 1) training loads and their start minutes, drawn from `seed` alone. `sources`, if
    given, is extended with where each load was drawn from (`sampler.last["component"]`: a trace's name, the
    generator or the seed's generator)."""
    sampler = sampler or LoadSampler(max_load_tpm=fleet.max_load_tpm)
    rng = np.random.default_rng([seed, 7919])
    drawn = []
    for _ in range(n_loads):
        drawn.append(sampler.sample(rng, minutes + 1))
        if sources is not None:
            sources.append(str(sampler.last.get("component", "")))
    return np.stack([d[0] for d in drawn]), np.array([d[1] for d in drawn])


def pi_round_loads(
    cfg: PPOConfig, fleet: FleetParams, sampler: LoadSampler | None, update: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Round `update` of rollout policy iteration's training loads: (loads, start minutes, capacity-noise keys,
    the source each was drawn from), `cfg.pi_loads` of `cfg.episode_minutes`, from the seed and the round alone."""
    sources: list[str] = []
    loads, starts = _draw_loads(fleet, sampler, cfg.seed * 1009 + update, cfg.pi_loads, cfg.episode_minutes, sources)
    keys = np.random.default_rng([cfg.seed, update, 31337]).integers(0, 2**63, cfg.pi_loads, dtype=np.uint64)
    return loads, starts, keys, sources


def _best_of_grid(
    mapping: ActionMapping,
    fleet: FleetParams,
    loads: np.ndarray,
    starts: np.ndarray,
    main: int | None,
    window: int,
    quiet: int = 0,
) -> int:
    """The grid action earning most on `loads`: as the main action (main None) or as the jump action."""
    from fleetpilot.sim.fleet import expected_reward
    from fleetpilot.training.backtest import simulate

    n_loads = loads.shape[0]
    rows = np.repeat(np.arange(mapping.n), n_loads)
    rule = (
        RuleActions(mapping, rows)
        if main is None
        else RuleActions(mapping, np.full_like(rows, main), rows, window, quiet)
    )
    tiled = np.tile(loads, (mapping.n, 1))
    traj = simulate(rule, tiled, np.tile(starts, mapping.n), np.zeros(rows.shape[0], dtype=np.uint64), fleet)
    e = expected_reward(traj.active, tiled[:, 1:], fleet).sum(axis=1)
    return int(np.argmax(e.reshape(mapping.n, n_loads).sum(axis=1)))


def best_fixed_action(
    mapping: ActionMapping, fleet: FleetParams, sampler: LoadSampler | None, seed: int, n_loads: int, minutes: int
) -> int:
    """The grid action with the highest expected profit as a fixed rule on `n_loads` training episodes."""
    loads, starts = _draw_loads(fleet, sampler, seed, n_loads, minutes)
    return _best_of_grid(mapping, fleet, loads, starts, None, 0)


def action_index(mapping: ActionMapping, text: str) -> int:
    """The action `text` names: "U,C" (the grid's nearest utilization and cushion) or "risk=R" (the newsvendor
    action of risk R, which the mapping must have)."""
    if text.startswith("risk="):
        r = float(text.removeprefix("risk="))
        if r not in mapping.newsvendor_risk:
            raise ValueError(f"{text}: the action mapping has no newsvendor action of risk {r:g}")
        return mapping.n_grid + mapping.newsvendor_risk.index(r)
    u, c = (float(x) for x in text.split(","))
    return mapping.index(u, c)


def choose_start_rule(
    cfg: PPOConfig, mapping: ActionMapping, fleet: FleetParams, loads: np.ndarray, starts: np.ndarray
) -> RuleActions:
    """The rule PPO starts from (see `PPOConfig.init_action` and `init_jump_action`), chosen on `loads`."""
    window, quiet = cfg.init_jump_window_minutes, cfg.init_jump_quiet_minutes

    def pick(text: str, main: int | None) -> int:
        if text == "auto":
            return _best_of_grid(mapping, fleet, loads, starts, main, window, quiet)
        return action_index(mapping, text)

    k0 = pick(cfg.init_action, None)
    k1 = pick(cfg.init_jump_action, k0) if window > 0 else k0
    return RuleActions(mapping, np.array(k0), np.array(k1), window if k1 != k0 else 0, quiet)


class _Recorder:
    """Runs a rule and keeps every observation's features with the rule's action (imitation data)."""

    name = "recorder"

    def __init__(self, rule: RuleActions):
        self.rule = rule
        self.x: list[np.ndarray] = []
        self.y: list[np.ndarray] = []

    def reset(self, n: int) -> None:
        self.rule.reset(n)

    def decide(self, obs: Observation) -> PolicyOutput:
        out = self.rule.decide(obs)
        self.x.append(obs.features)
        self.y.append(out.raw)
        return out


def imitate(
    agent: Agent, rule: RuleActions, fleet: FleetParams, loads: np.ndarray, starts: np.ndarray, cfg: PPOConfig
) -> float:
    """Fit the actor to `rule`'s decisions on `loads` (cross-entropy); returns the share of them it matches."""
    from fleetpilot.training.backtest import simulate

    rec = _Recorder(rule)
    simulate(rec, loads, starts, np.zeros(loads.shape[0], dtype=np.uint64), fleet)
    x = torch.from_numpy(np.concatenate(rec.x))
    y = torch.from_numpy(np.concatenate(rec.y))
    opt = torch.optim.Adam(agent.actor.parameters(), lr=cfg.imitation_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    mb = 4096
    for _ in range(cfg.imitation_epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for s in range(0, x.shape[0], mb):
            i = perm[s : s + mb]
            loss = nn.functional.cross_entropy(agent.actor(x[i]), y[i], label_smoothing=cfg.imitation_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((agent(x) == y).float().mean())


def validation_runs(cfg: PPOConfig) -> list:
    """The synthetic validation seeds (training on traces validates on their held-out tails instead)."""
    return [synthetic_run(s, cfg.eval_minutes) for s in cfg.eval_seeds]


def _plot_curve(log_rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ev = [r for r in log_rows if "val_pct_of_oracle" in r]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
    key, label = ("reward_per_minute", "mean reward $/minute")
    if log_rows and key not in log_rows[0]:  # rollout-pi: each round's regret on the loads it held out
        key, label = ("holdout_regret", "held-out regret (shares of a period's revenue)")
    ax[0].plot([r["step"] for r in log_rows], [r[key] for r in log_rows], lw=0.8)
    ax[0].set_xlabel("fleet-minutes")
    ax[0].set_ylabel(label)
    if ev:
        ax[1].plot([r["step"] for r in ev], [r["val_pct_of_oracle"] for r in ev], "o-")
    ax[1].set_xlabel("fleet-minutes")
    ax[1].set_ylabel("validation % of oracle")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- Training, step by step: seeding, start (resume or a starting rule), then per update collect_rollout,
# compute_gae, ppo_update, validation with keep-best, progress and checkpoint; finally the plot and the result.

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.jsonl"
CURVE_FILE = "learning_curve.png"
CHECKPOINT_EVERY_UPDATES = 20


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed: unreadable, not a checkpoint, or written for another configuration."""


@dataclass
class Checkpoint:
    """What a resumed training needs: written every `CHECKPOINT_EVERY_UPDATES` updates and at the end."""

    agent: dict
    """the agent's state dict (the last actor, not the kept best one)"""
    optimizer: dict
    update: int
    """the last finished update"""
    global_step: int
    config: dict
    """`asdict(PPOConfig)`: a checkpoint resumes only the same configuration"""
    torch_rng: torch.Tensor
    """the state of the training's torch generator (action sampling and minibatch order)"""
    start: dict = field(default_factory=dict)
    """the starting rule (`TrainResult.start_rule`)"""
    best: dict = field(default_factory=dict)
    """the best validated actor so far, {"update", "validation", "actor"}; empty without keep-best"""
    newsvendor_tail: int = 0
    """the version of the rise tail the actor's newsvendor actions priced (`policies.rise_tail.TAIL_VERSION`);
    0: written before checkpoints recorded it, so unknown"""

    def save(self, path: Path) -> None:
        torch.save({f.name: getattr(self, f.name) for f in fields(self)}, path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """The checkpoint in `path`; CheckpointError naming the file if it is damaged or not a checkpoint."""
        try:
            state = torch.load(path, weights_only=True)  # tensors and plain data: a planted file runs no code
        except Exception as exc:  # a damaged file raises anything from pickle, zip or torch: all mean the same
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(
                f"{path}: not a readable checkpoint ({reason}); delete it or train with --no-resume"
            ) from None
        known = {f.name for f in fields(cls)}
        required = {"agent", "optimizer", "update", "global_step", "config", "torch_rng"}
        if not isinstance(state, dict) or not required <= state.keys():
            missing = sorted(required - state.keys()) if isinstance(state, dict) else ["everything"]
            raise CheckpointError(
                f"{path}: not a training checkpoint (missing {', '.join(missing)}); delete it or use --no-resume"
            )
        return cls(**{k: v for k, v in state.items() if k in known})


@dataclass
class TrainResult:
    """What `train` returns: the exported actor and what the manifest records about its training."""

    agent: Agent
    """the agent whose actor is exported (the kept best one under keep-best)"""
    mapping: ActionMapping
    validation: dict
    """the exported actor's validation summary (expected_profit_usd, downtime_minutes, pct_of_oracle);
    empty without validation runs"""
    steps: int
    """fleet-minutes of experience collected (the resumed run's included)"""
    start_rule: dict
    """the imitated starting rule: main and jump action, jump window and quiet minutes, imitated share"""
    selected_update: int | None
    """the update whose actor is exported under keep-best (0: the imitated starting rule); None: the last"""


def seeded_generator(seed: int) -> torch.Generator:
    """The training's one torch generator: network initialization, action sampling, minibatch order.
    (Numpy draws come from generators seeded from the config seed as well: loads and envs.)"""
    return torch.Generator().manual_seed(seed)


def training_fleet(cfg: PPOConfig, fleet: FleetParams) -> FleetParams:
    """The simulator parameters training optimizes: `fleet` with the configured downtime penalty."""
    if cfg.downtime_cost_usd_per_minute is None:
        return fleet
    return fleet.model_copy(update={"downtime_cost_usd_per_minute": cfg.downtime_cost_usd_per_minute})


_clock = time.perf_counter  #: the wall clock the training budget reads


class Validator:
    """Backtests an actor on the validation runs; the score is % of the hindsight oracle (computed once).
    `seconds`: how long the last validation took (the oracle's once excepted; 0 before any)."""

    def __init__(self, runs: list, fleet: FleetParams, mapping: ActionMapping):
        self.runs, self.fleet, self.mapping = runs, fleet, mapping
        self._oracle: float | None = None
        self.seconds = 0.0

    def prepare(self) -> None:
        """Compute the oracle's score of the validation runs (once; the first validation does it otherwise)."""
        if self._oracle is None and self.runs:
            self._oracle = backtest(self.runs, {"oracle": None}, self.fleet).summary[0]["expected_profit_usd"]

    def __call__(self, agent: Agent) -> dict:
        self.prepare()
        t0 = _clock()
        s = backtest(self.runs, {"ppo": TorchPolicy(agent, self.mapping)}, self.fleet).summary[0]
        self.seconds = _clock() - t0
        return {
            "expected_profit_usd": s["expected_profit_usd"],
            "downtime_minutes": s["downtime_minutes"],
            "pct_of_oracle": round(100 * s["expected_profit_usd"] / self._oracle, 2),
        }


class Budget:
    """`--budget-minutes`: the wall time of one training, counted from the start of `train` (choosing and
    imitating the starting rule count; reading the data and the final report do not). Once an update's work is
    done, the loop stops unless what is left of it (its validation) and one more update (the longest so far, and
    its validation, should it be the last) would still end within the budget; the first update of a run always
    runs, so every run makes progress and leaves a checkpoint to resume from."""

    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else _clock() + seconds
        self.longest = 0.0
        self.last = 0.0  #: the work seconds of the last update (logged as `work_seconds`)
        self._began = _clock()

    def resume(self, rows: list[dict], validator: Validator) -> None:
        """Before the first update of a resumed run: what the train log says the run's updates and
        validations took (`work_seconds`, `val_seconds`), so that its first budget decision does not take
        them for free (logs written before these fields: nothing known, as before)."""
        self.longest = max((float(r.get("work_seconds", 0.0)) for r in rows), default=0.0)
        validated = [float(r["val_seconds"]) for r in rows if "val_seconds" in r]
        if validated:
            validator.seconds = validated[-1]

    def begin(self) -> None:
        """An update's work starts."""
        self._began = _clock()

    def next_would_overrun(self, validation_seconds: float, validates_now: bool) -> bool:
        """Called once per update, when its work is done: whether the rest of this update (a validation of
        `validation_seconds` if `validates_now`) and another update, as long as the longest one's work so far and
        validated, would end past the budget."""
        now = _clock()
        self.last = now - self._began
        self.longest = max(self.longest, self.last)
        if self.deadline is None:
            return False
        rest = validation_seconds if validates_now else 0.0
        return now + rest + self.longest + validation_seconds > self.deadline


class KeepBest:
    """The actor with the best validation score seen (`PPOConfig.keep_best`), as stored in a checkpoint."""

    def __init__(self, best: dict | None = None):
        self.best: dict = best or {}

    def offer(self, update: int, validation: dict, agent: Agent) -> None:
        if not self.best or validation["pct_of_oracle"] > self.best["validation"]["pct_of_oracle"]:
            self.best = {"update": update, "validation": validation, "actor": copy.deepcopy(agent.actor.state_dict())}

    def restore(self, agent: Agent) -> tuple[dict, int] | None:
        """Load the kept actor into `agent`: (its validation, its update), or None if none was kept."""
        if not self.best:
            return None
        agent.actor.load_state_dict(self.best["actor"])
        return self.best["validation"], self.best["update"]


@dataclass
class RunState:
    """What carries from one update to the next and into the checkpoint."""

    update: int
    """the last finished update (0: none yet)"""
    global_step: int
    start: dict
    best: KeepBest

    def checkpoint(self, cfg: PPOConfig, agent: Agent, opt: torch.optim.Optimizer, gen: torch.Generator) -> Checkpoint:
        return Checkpoint(
            agent.state_dict(), opt.state_dict(), self.update, self.global_step, asdict(cfg), gen.get_state(),
            self.start, self.best.best, TAIL_VERSION,
        )  # fmt: skip


def resume_run(path: Path, cfg: PPOConfig, agent: Agent, opt: torch.optim.Optimizer, gen: torch.Generator) -> RunState:
    """Load the checkpoint at `path` into the agent, the optimizer and the generator."""
    ckpt = Checkpoint.load(path)
    # a setting added since the checkpoint was written counts as its default: a new setting's default must
    # reproduce what training did before it existed (a setting the checkpoint has and this version does not
    # know, or any other difference, still refuses)
    saved = {**asdict(PPOConfig()), **ckpt.config} if isinstance(ckpt.config, dict) else ckpt.config
    if saved != asdict(cfg):
        raise CheckpointError(f"{path} was written with another configuration; use a new --out or --no-resume")
    if ActionMapping.from_json(cfg.mapping).newsvendor_risk and ckpt.newsvendor_tail != TAIL_VERSION:
        # its actor learned what the newsvendor actions did under that tail: going on would export, stamped with
        # this version, a policy trained partly on another meaning of its actions
        had = f"rise tail v{ckpt.newsvendor_tail}" if ckpt.newsvendor_tail else "no rise tail version (an older one)"
        raise CheckpointError(
            f"{path} records {had}; this build's tail is v{TAIL_VERSION}: use a new --out or --no-resume"
        )
    try:
        agent.load_state_dict(ckpt.agent)
        opt.load_state_dict(ckpt.optimizer)
        gen.set_state(ckpt.torch_rng)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: does not fit this network ({reason}); use a new --out or --no-resume") from None
    if not agent.masked():
        raise CheckpointError(
            f"{path}: its actor reads features that actor_features leaves out; use a new --out or --no-resume"
        )
    return RunState(ckpt.update, ckpt.global_step, ckpt.start, KeepBest(ckpt.best))


def start_from_rule(
    cfg: PPOConfig,
    agent: Agent,
    mapping: ActionMapping,
    fleet: FleetParams,
    sampler: LoadSampler | None,
    progress: bool,
) -> dict:
    """Choose the starting rule on training loads and fit the actor to it (see `choose_start_rule`, `imitate`);
    returns what the manifest records about it."""
    loads, starts = _draw_loads(fleet, sampler, cfg.seed, cfg.init_loads, cfg.episode_minutes)
    rule = choose_start_rule(cfg, mapping, fleet, loads, starts)
    start = {
        "main": mapping.describe(int(rule.main)),
        "jump": mapping.describe(int(rule.jump)),
        "jump_window_minutes": rule.window,
        "jump_quiet_minutes": rule.quiet,
        "imitated_share": round(imitate(agent, rule, fleet, loads, starts, cfg), 5),
    }
    if progress:
        jump = f", {start['jump']} for {rule.window} minutes after a load jump" if rule.window else ""
        print(
            f"starting from the rule {start['main']}{jump} "
            f"(imitated: {100 * start['imitated_share']:.2f}% of its decisions)",
            file=sys.stderr,
        )
    return start


@dataclass
class Rollout:
    """One rollout's buffers, (num_steps, num_envs) each (observations: x OBS_DIM); reused every update."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    """scaled by `PPOConfig.reward_scale`"""
    dones: torch.Tensor
    values: torch.Tensor

    @classmethod
    def empty(cls, num_steps: int, num_envs: int) -> Rollout:
        shape = (num_steps, num_envs)
        return cls(
            torch.zeros((*shape, OBS_DIM)),
            torch.zeros(shape, dtype=torch.long),
            torch.zeros(shape),
            torch.zeros(shape),
            torch.zeros(shape),
            torch.zeros(shape),
        )


def sample_actions(dist: torch.distributions.Categorical, gen: torch.Generator) -> torch.Tensor:
    """One action per row of `dist`, drawn from `gen` (what `dist.sample()` draws from the global RNG)."""
    probs = dist.probs.reshape(-1, dist.param_shape[-1])
    return torch.multinomial(probs, 1, True, generator=gen).T.reshape(dist.batch_shape)


def collect_rollout(
    agent: Agent,
    env: WebFleetVectorEnv,
    mapping: ActionMapping,
    fleet: FleetParams,
    rollout: Rollout,
    next_obs: np.ndarray,
    gen: torch.Generator,
    reward_scale: float,
) -> tuple[np.ndarray, list[float]]:
    """Step the envs `num_steps` minutes with actions sampled from the actor, filling `rollout`; returns the
    next observation and each minute's mean (unscaled) reward."""
    lo, hi, d = -fleet.max_scale_in_per_minute, fleet.max_scale_out_per_minute, fleet.max_delta
    means = []
    for step in range(rollout.obs.shape[0]):
        obs_t = torch.from_numpy(next_obs)
        with torch.no_grad():
            logits = agent.actor(obs_t)
            value = agent.critic(obs_t).squeeze(-1)
        dist = torch.distributions.Categorical(logits=logits)
        a = sample_actions(dist, gen)
        rollout.obs[step], rollout.actions[step], rollout.logprobs[step] = obs_t, a, dist.log_prob(a)
        rollout.values[step] = value
        struct = env.last_obs
        desired = mapping.desired(a.numpy(), struct)
        delta = np.clip(desired - struct.total, lo, hi)
        next_obs, reward, term, trunc, _ = env.step(delta + d)
        rollout.rewards[step] = torch.from_numpy(reward * reward_scale).float()
        rollout.dones[step] = torch.from_numpy((term | trunc).astype(np.float32))
        means.append(float(reward.mean()))
    return next_obs, means


@torch.no_grad()
def compute_gae(
    rollout: Rollout, next_value: torch.Tensor, gamma: float, gae_lambda: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation: (advantages, returns), each (num_steps, num_envs). `next_value`
    bootstraps the minute after the rollout."""
    adv = torch.zeros_like(rollout.rewards)
    last = torch.zeros(rollout.rewards.shape[1])
    n = rollout.rewards.shape[0]
    for t in reversed(range(n)):
        nv = next_value if t == n - 1 else rollout.values[t + 1]
        nonterminal = 1.0 - rollout.dones[t]  # truncation treated as an end (no bootstrap): small bias
        delta_t = rollout.rewards[t] + gamma * nv * nonterminal - rollout.values[t]
        last = delta_t + gamma * gae_lambda * nonterminal * last
        adv[t] = last
    return adv, adv + rollout.values


def ppo_update(
    agent: Agent,
    opt: torch.optim.Optimizer,
    rollout: Rollout,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    cfg: PPOConfig,
    gen: torch.Generator,
) -> dict[str, float]:
    """`update_epochs` passes over the rollout in `num_minibatches` shuffled minibatches: clipped policy loss,
    value loss, entropy bonus. Returns the last minibatch's loss, value loss and entropy."""
    b_obs, b_act = rollout.obs.reshape(-1, OBS_DIM), rollout.actions.reshape(-1)
    b_logp, b_adv, b_ret = rollout.logprobs.reshape(-1), advantages.reshape(-1), returns.reshape(-1)
    batch = b_act.shape[0]
    mb = batch // cfg.num_minibatches
    for _ in range(cfg.update_epochs):
        perm = torch.randperm(batch, generator=gen)
        for s in range(0, batch, mb):
            i = perm[s : s + mb]
            logits = agent.actor(b_obs[i])
            dist = torch.distributions.Categorical(logits=logits)
            ratio = torch.exp(dist.log_prob(b_act[i]) - b_logp[i])
            a_n = (b_adv[i] - b_adv[i].mean()) / (b_adv[i].std() + 1e-8)
            pg = torch.max(-a_n * ratio, -a_n * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
            v_loss = 0.5 * ((agent.critic(b_obs[i]).squeeze(-1) - b_ret[i]) ** 2).mean()
            loss = pg + cfg.vf_coef * v_loss - cfg.ent_coef * dist.entropy().mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            opt.step()
    return {
        "loss": float(loss.detach()),
        "value_loss": float(v_loss.detach()),
        "entropy": float(dist.entropy().mean().detach()),
    }


class RewardAverage:
    """Exponential moving average of the mean reward per minute (weight 0.01 per minute)."""

    def __init__(self) -> None:
        self.value: float | None = None

    def add(self, means: list[float]) -> float:
        for m in means:
            self.value = m if self.value is None else 0.99 * self.value + 0.01 * m
        assert self.value is not None
        return self.value


class TrainLog:
    """out/train_log.jsonl: one JSON row per update; kept across a resume, started over otherwise."""

    def __init__(self, path: Path, keep: bool):
        self.path = path
        self.rows: list[dict] = []
        if keep and path.is_file():
            self.rows = [json.loads(x) for x in path.read_text().splitlines()]
        elif not keep and path.exists():
            path.unlink()

    def append(self, row: dict) -> None:
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def train(
    cfg: PPOConfig,
    out: Path,
    sampler: LoadSampler | None = None,
    fleet: FleetParams | None = None,
    val_runs: list | None = None,
    budget_seconds: float | None = None,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train; writes out/checkpoint.pt (resumable), out/train_log.jsonl, out/learning_curve.png.
    Before PPO, the actor imitates a starting rule chosen on training loads (`start_from_rule`); a run with a
    checkpoint in `out` goes on from it instead (unless `resume` is False). Under keep-best the returned agent
    carries the best validated actor."""
    from fleetpilot.training.policy_iteration import periods_kept

    budget = Budget(budget_seconds)
    if cfg.method == "rollout-pi" and not periods_kept(cfg.episode_minutes, cfg.pi_skip_minutes, cfg.pi_period_minutes):
        raise UserError(  # `train --trace` shortens episodes to the shortest training part
            f"rollout-pi: episodes of {cfg.episode_minutes} minutes (the shortest training part) leave no period "
            f"after pi_skip_minutes {cfg.pi_skip_minutes}; give a longer history or a smaller pi_skip_minutes"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    gen = seeded_generator(cfg.seed)
    fleet = fleet or FleetParams()
    mapping = ActionMapping.from_json(cfg.mapping)
    agent = Agent(mapping.n, cfg.hidden, generator=gen, reads=cfg.actor_features)
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
    validator = Validator(val_runs if val_runs is not None else validation_runs(cfg), fleet, mapping)
    resuming = resume and (out / CHECKPOINT_FILE).is_file()
    if resuming:
        run = resume_run(out / CHECKPOINT_FILE, cfg, agent, opt, gen)
    else:
        start = start_from_rule(cfg, agent, mapping, training_fleet(cfg, fleet), sampler, progress)
        run = RunState(0, 0, start, KeepBest())
        if validator.runs and cfg.keep_best:
            run.best.offer(0, validator(agent), agent)
    log = TrainLog(out / LOG_FILE, keep=resuming)
    if resuming:
        budget.resume(log.rows, validator)
    validator.prepare()  # the oracle now, inside the budget, rather than untimed in the first update's validation
    total = max(cfg.total_steps // (cfg.num_envs * cfg.num_steps), 1) * cfg.num_envs * cfg.num_steps
    if cfg.method == "rollout-pi":
        total = cfg.pi_iterations * cfg.pi_loads * (mapping.n + 1) * cfg.episode_minutes
    bar = Progress(total, "train", "steps", initial=run.global_step, unit_scale=True) if progress else None
    loop = _pi_loop if cfg.method == "rollout-pi" else _ppo_loop
    try:
        last_val = loop(cfg, out, agent, opt, gen, run, log, validator, sampler, fleet, budget, bar)
    finally:
        if bar is not None:
            bar.close()
    _plot_curve(log.rows, out / CURVE_FILE)
    selected = None
    kept = run.best.restore(agent)
    if kept is not None:
        last_val, selected = kept
        if progress:
            print(
                f"kept the actor of update {selected} (validation {last_val['pct_of_oracle']:.2f}% of oracle; "
                "update 0 is the imitated starting rule)",
                file=sys.stderr,
            )
    return TrainResult(agent, mapping, last_val, run.global_step, run.start, selected)


def _validate(cfg: PPOConfig, validator: Validator, run: RunState, update: int, agent: Agent, row: dict) -> dict:
    """Validate the agent after `update`, offer it to keep-best and note the figures in the log row."""
    val = validator(agent)
    if cfg.keep_best:
        run.best.offer(update, val, agent)
    row["val_pct_of_oracle"] = val["pct_of_oracle"]
    row["val_downtime_minutes"] = val["downtime_minutes"]
    row["val_seconds"] = round(validator.seconds, 3)
    return val


def _ppo_loop(
    cfg: PPOConfig,
    out: Path,
    agent: Agent,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    run: RunState,
    log: TrainLog,
    validator: Validator,
    sampler: LoadSampler | None,
    fleet: FleetParams,
    budget: Budget,
    bar: Progress | None,
) -> dict:
    """The PPO updates from `run.update + 1` to the last (or the `budget`'s), each: collect, GAE, update, validate,
    log, progress (`bar`), checkpoint; returns the last validation."""
    env = WebFleetVectorEnv(
        cfg.num_envs, training_fleet(cfg, fleet), sampler, cfg.episode_minutes, expected_reward=cfg.expected_reward
    )
    # The env's episodes are seeded from the config seed and the update number, so a resumed run restarts
    # its envs deterministically (the unfinished episodes of the interrupted run are not replayed).
    next_obs, _ = env.reset(seed=cfg.seed * 100_003 + run.update + 1)
    num_updates = max(cfg.total_steps // (cfg.num_envs * cfg.num_steps), 1)
    rollout = Rollout.empty(cfg.num_steps, cfg.num_envs)
    reward = RewardAverage()
    mapping = validator.mapping
    t_start, steps_at_start = time.perf_counter(), run.global_step
    last_val: dict = {}
    for update in range(run.update + 1, num_updates + 1):
        budget.begin()
        for g in opt.param_groups:  # the learning rate anneals linearly to 0
            g["lr"] = (1.0 - (update - 1.0) / num_updates) * cfg.learning_rate
        next_obs, means = collect_rollout(agent, env, mapping, fleet, rollout, next_obs, gen, cfg.reward_scale)
        with torch.no_grad():
            next_value = agent.critic(torch.from_numpy(next_obs)).squeeze(-1)
        advantages, returns = compute_gae(rollout, next_value, cfg.gamma, cfg.gae_lambda)
        losses = ppo_update(agent, opt, rollout, advantages, returns, cfg, gen)
        run.update, run.global_step = update, run.global_step + cfg.num_envs * cfg.num_steps
        elapsed = time.perf_counter() - t_start
        sps = (run.global_step - steps_at_start) / max(elapsed, 1e-9)
        row = {
            "update": update,
            "step": run.global_step,
            "steps_per_s": round(sps),
            "reward_per_minute": reward.add(means),
        }
        row.update(losses)
        validates = bool(validator.runs) and update % cfg.eval_every_updates == 0
        overrun = budget.next_would_overrun(validator.seconds, validates)  # also times this update's work
        final = update == num_updates or overrun
        row["work_seconds"] = round(budget.last, 3)
        if validates or (final and validator.runs):
            last_val = _validate(cfg, validator, run, update, agent, row)
        log.append(row)
        if bar is not None:
            pct = f" val {last_val['pct_of_oracle']:.1f}% of oracle" if last_val else ""
            bar.update(
                run.global_step - bar.n, postfix=f"reward {row['reward_per_minute'] * 10_000:,.0f} $/10k min{pct}"
            )
        if update % CHECKPOINT_EVERY_UPDATES == 0 or final:
            run.checkpoint(cfg, agent, opt, gen).save(out / CHECKPOINT_FILE)
        if final:
            break
    return last_val


def _pi_loop(
    cfg: PPOConfig,
    out: Path,
    agent: Agent,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    run: RunState,
    log: TrainLog,
    validator: Validator,
    sampler: LoadSampler | None,
    fleet: FleetParams,
    budget: Budget,
    bar: Progress | None,
) -> dict:
    """`method: rollout-pi`: rounds from `run.update + 1` to the last (or the `budget`'s) of roll out (under the
    current actor), fit, validate with keep-best, log, checkpoint (`training.policy_iteration`); returns the last
    validation."""
    from fleetpilot.training.policy_iteration import fit_actor, segment_rollouts

    mapping = validator.mapping
    train_fleet = training_fleet(cfg, fleet)
    t_start, last_val, steps_at_start = time.perf_counter(), {}, run.global_step

    def actions(features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return agent(torch.from_numpy(features)).numpy()

    for update in range(run.update + 1, cfg.pi_iterations + 1):
        budget.begin()
        loads, starts, keys, sources = pi_round_loads(cfg, train_fleet, sampler, update)
        seg = segment_rollouts(
            actions, mapping, loads, starts, keys, train_fleet,
            cfg.pi_hold_minutes, cfg.pi_period_minutes, cfg.pi_skip_minutes, np.array(sources),
        )  # fmt: skip
        fit = fit_actor(agent.actor, seg, cfg.pi_epochs, cfg.pi_learning_rate, gen, holdout=cfg.pi_holdout)
        run.update = update
        run.global_step += cfg.pi_loads * (mapping.n + 1) * cfg.episode_minutes
        elapsed = time.perf_counter() - t_start
        overrun = budget.next_would_overrun(validator.seconds, bool(validator.runs))  # also times this update's work
        final = update == cfg.pi_iterations or overrun
        row = {
            "update": update,
            "step": run.global_step,
            "steps_per_s": round((run.global_step - steps_at_start) / max(elapsed, 1e-9)),
            "periods": int(seg.features.shape[0]),
            "fit_regret": fit.regret,
            "holdout_regret": fit.holdout_regret,
            "holdout_regret_before": fit.holdout_regret_before,
            "fit_epoch": fit.epoch,
            "fit_holdout": fit.holdout,
            "work_seconds": round(budget.last, 3),
        }
        if fit.source_change is not None:
            row["fit_source_change"], row["fit_source_change_pass"] = fit.source_change, fit.source_change_pass
        if validator.runs:
            last_val = _validate(cfg, validator, run, update, agent, row)
        log.append(row)
        if bar is not None:
            pct = f" val {last_val['pct_of_oracle']:.1f}% of oracle" if last_val else ""
            bar.update(run.global_step - bar.n, postfix=f"round {update}{pct}")
        run.checkpoint(cfg, agent, opt, gen).save(out / CHECKPOINT_FILE)
        if final:
            break
    return last_val
