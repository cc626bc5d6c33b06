"""PPO in torch, CleanRL style: one file, a dataclass of hyperparameters, preallocated buffers, explicit GAE.

The agent sees the features of the one observation builder and picks a discrete action of the policy's
`ActionMapping` (a utilization target and a cushion); the mapping turns it into a desired capacity, and the
env applies the step limits. Training runs on the numpy vector env (`WebFleetVectorEnv`).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fleetpilot.policies.actions import ActionMapping
from fleetpilot.policies.base import PolicyOutput
from fleetpilot.policies.cushion import RuleActions
from fleetpilot.policies.observation import OBS_DIM, Observation
from fleetpilot.training.backtest import backtest, synthetic_run
from fleetpilot.training.env import LoadSampler, WebFleetVectorEnv
from fleetpilot.training.params import FleetParams
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
    loads (`choose_start_rule`), or "U,C" (utilization, cushion)"""
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
    threads: int = 2
    """torch CPU threads"""
    mapping: dict = field(default_factory=lambda: ActionMapping().to_json())
    """the action mapping (see policies.actions)"""


class Agent(nn.Module):
    def __init__(self, n_actions: int, hidden: int = 64):
        super().__init__()

        def layer(i, o, std=SQRT2):
            lin = nn.Linear(i, o)
            nn.init.orthogonal_(lin.weight, std)
            nn.init.zeros_(lin.bias)
            return lin

        self.actor = nn.Sequential(
            layer(OBS_DIM, hidden), nn.Tanh(), layer(hidden, hidden), nn.Tanh(), layer(hidden, n_actions, 0.01)
        )
        self.critic = nn.Sequential(
            layer(OBS_DIM, hidden), nn.Tanh(), layer(hidden, hidden), nn.Tanh(), layer(hidden, 1, 1.0)
        )

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
    fleet: FleetParams, sampler: LoadSampler | None, seed: int, n_loads: int, minutes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(n_loads, minutes + 1) training loads and their start minutes, drawn from `seed` alone."""
    sampler = sampler or LoadSampler(max_load_tpm=fleet.max_load_tpm)
    rng = np.random.default_rng([seed, 7919])
    drawn = [sampler.sample(rng, minutes + 1) for _ in range(n_loads)]
    return np.stack([d[0] for d in drawn]), np.array([d[1] for d in drawn])


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
    from fleetpilot.training.backtest import simulate
    from fleetpilot.training.fleet import expected_reward

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


def choose_start_rule(
    cfg: PPOConfig, mapping: ActionMapping, fleet: FleetParams, loads: np.ndarray, starts: np.ndarray
) -> RuleActions:
    """The rule PPO starts from (see `PPOConfig.init_action` and `init_jump_action`), chosen on `loads`."""
    window, quiet = cfg.init_jump_window_minutes, cfg.init_jump_quiet_minutes

    def pick(text: str, main: int | None) -> int:
        if text == "auto":
            return _best_of_grid(mapping, fleet, loads, starts, main, window, quiet)
        u, c = (float(x) for x in text.split(","))
        return mapping.index(u, c)

    k0 = pick(cfg.init_action, None)
    k1 = pick(cfg.init_jump_action, k0) if window > 0 else k0
    return RuleActions(mapping, np.array(k0), np.array(k1), window if k1 != k0 else 0, quiet)


class _Recorder:
    """Runs a rule and keeps every observation's features with the rule's action (imitation data)."""

    name = "recorder"

    def __init__(self, rule: RuleActions):
        self.rule, self.x, self.y = rule, [], []

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
            loss = nn.functional.cross_entropy(agent.actor(x[i]), y[i])
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
    ax[0].plot([r["step"] for r in log_rows], [r["reward_per_minute"] for r in log_rows], lw=0.8)
    ax[0].set_xlabel("fleet-minutes")
    ax[0].set_ylabel("mean reward $/minute")
    if ev:
        ax[1].plot([r["step"] for r in ev], [r["val_pct_of_oracle"] for r in ev], "o-")
    ax[1].set_xlabel("fleet-minutes")
    ax[1].set_ylabel("validation % of oracle")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint, read with `weights_only=True`: tensors and plain data only, so a checkpoint file
    planted in the output directory cannot run code when unpickled (ValueError naming the file instead)."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # UnpicklingError and friends: not a checkpoint this build wrote
        raise ValueError(
            f"{path}: not a checkpoint this build can read safely ({str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a checkpoint this build wrote")
    return state


def train(
    cfg: PPOConfig,
    out: Path,
    sampler: LoadSampler | None = None,
    fleet: FleetParams | None = None,
    val_runs: list | None = None,
    budget_seconds: float | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict:
    """Train; writes out/checkpoint.pt (resumable), out/train_log.jsonl, out/learning_curve.png.
    Before PPO, the actor imitates a starting rule chosen on training loads (`choose_start_rule`, `imitate`).
    Returns {"agent": Agent, "mapping": ActionMapping, "validation": last validation summary, "steps": int,
    "start_rule": what was imitated}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    fleet = fleet or FleetParams()
    train_fleet = (
        fleet
        if cfg.downtime_cost_usd_per_minute is None
        else fleet.model_copy(update={"downtime_cost_usd_per_minute": cfg.downtime_cost_usd_per_minute})
    )
    mapping = ActionMapping.from_json(cfg.mapping)
    env = WebFleetVectorEnv(
        cfg.num_envs,
        fleet=train_fleet,
        sampler=sampler,
        episode_minutes=cfg.episode_minutes,
        expected_reward=cfg.expected_reward,
    )
    agent = Agent(mapping.n, cfg.hidden)
    ckpt = out / "checkpoint.pt"
    resuming = resume and ckpt.is_file()
    start: dict = {}
    if not resuming:
        loads, starts = _draw_loads(train_fleet, sampler, cfg.seed, cfg.init_loads, cfg.episode_minutes)
        rule = choose_start_rule(cfg, mapping, train_fleet, loads, starts)
        start = {
            "main": mapping.describe(int(rule.main)),
            "jump": mapping.describe(int(rule.jump)),
            "jump_window_minutes": rule.window,
            "jump_quiet_minutes": rule.quiet,
            "imitated_share": round(imitate(agent, rule, train_fleet, loads, starts, cfg), 5),
        }
        if progress:
            jump = f", {start['jump']} for {rule.window} minutes after a load jump" if rule.window else ""
            print(
                f"starting from the rule {start['main']}{jump} "
                f"(imitated: {100 * start['imitated_share']:.2f}% of its decisions)",
                file=sys.stderr,
            )
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
    batch = cfg.num_envs * cfg.num_steps
    num_updates = max(cfg.total_steps // batch, 1)
    mb = batch // cfg.num_minibatches
    start_update, global_step = 1, 0
    log_path = out / "train_log.jsonl"
    log_rows: list[dict] = []
    if resuming:
        state = load_checkpoint(ckpt)
        if state["config"] != asdict(cfg):
            raise ValueError(f"{ckpt} was written with another configuration; use a new --out or --no-resume")
        agent.load_state_dict(state["agent"])
        opt.load_state_dict(state["optimizer"])
        start_update, global_step = state["update"] + 1, state["global_step"]
        start = state.get("start", {})
        torch.set_rng_state(state["torch_rng"])
        log_rows = [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.is_file() else []
    elif log_path.exists():
        log_path.unlink()
    # The env's episodes are seeded from the config seed and the update number, so a resumed run restarts
    # its envs deterministically (the unfinished episodes of the interrupted run are not replayed).
    next_obs, _ = env.reset(seed=cfg.seed * 100_003 + start_update)
    val_runs = val_runs if val_runs is not None else validation_runs(cfg)
    oracle_e: list[float] = []

    def validate() -> dict:
        if not oracle_e:
            oracle_e.append(backtest(val_runs, {"oracle": None}, fleet).summary[0]["expected_profit_usd"])
        s = backtest(val_runs, {"ppo": TorchPolicy(agent, mapping)}, fleet).summary[0]
        return {
            "expected_profit_usd": s["expected_profit_usd"],
            "downtime_minutes": s["downtime_minutes"],
            "pct_of_oracle": round(100 * s["expected_profit_usd"] / oracle_e[0], 2),
        }

    best: dict = {}
    if resuming:
        best = state.get("best", {})
    elif val_runs and cfg.keep_best:
        best = {"update": 0, "validation": validate(), "actor": copy.deepcopy(agent.actor.state_dict())}
    obs_buf = torch.zeros((cfg.num_steps, cfg.num_envs, OBS_DIM))
    act_buf = torch.zeros((cfg.num_steps, cfg.num_envs), dtype=torch.long)
    logp_buf = torch.zeros((cfg.num_steps, cfg.num_envs))
    rew_buf = torch.zeros((cfg.num_steps, cfg.num_envs))
    done_buf = torch.zeros((cfg.num_steps, cfg.num_envs))
    val_buf = torch.zeros((cfg.num_steps, cfg.num_envs))
    lo, hi, d = -fleet.max_scale_in_per_minute, fleet.max_scale_out_per_minute, fleet.max_delta
    t_start = time.perf_counter()
    steps_at_start = global_step
    last_val: dict = {}
    reward_ema = None
    bar = Progress(num_updates * batch, "train", "steps", initial=global_step, unit_scale=True) if progress else None
    for update in range(start_update, num_updates + 1):
        frac = 1.0 - (update - 1.0) / num_updates
        for g in opt.param_groups:
            g["lr"] = frac * cfg.learning_rate
        for step in range(cfg.num_steps):
            obs_t = torch.from_numpy(next_obs)
            with torch.no_grad():
                logits = agent.actor(obs_t)
                value = agent.critic(obs_t).squeeze(-1)
            dist = torch.distributions.Categorical(logits=logits)
            a = dist.sample()
            obs_buf[step], act_buf[step], logp_buf[step], val_buf[step] = obs_t, a, dist.log_prob(a), value
            struct = env.last_obs
            desired = mapping.desired(a.numpy(), struct)
            delta = np.clip(desired - struct.total, lo, hi)
            next_obs, reward, term, trunc, _ = env.step(delta + d)
            rew_buf[step] = torch.from_numpy(reward * cfg.reward_scale).float()
            done_buf[step] = torch.from_numpy((term | trunc).astype(np.float32))
            global_step += cfg.num_envs
            m = float(reward.mean())
            reward_ema = m if reward_ema is None else 0.99 * reward_ema + 0.01 * m
        with torch.no_grad():
            next_value = agent.critic(torch.from_numpy(next_obs)).squeeze(-1)
            adv = torch.zeros_like(rew_buf)
            last = torch.zeros(cfg.num_envs)
            for t in reversed(range(cfg.num_steps)):
                nv = next_value if t == cfg.num_steps - 1 else val_buf[t + 1]
                nonterminal = 1.0 - done_buf[t]  # truncation treated as an end (no bootstrap): small bias
                delta_t = rew_buf[t] + cfg.gamma * nv * nonterminal - val_buf[t]
                last = delta_t + cfg.gamma * cfg.gae_lambda * nonterminal * last
                adv[t] = last
            ret = adv + val_buf
        b_obs, b_act = obs_buf.reshape(-1, OBS_DIM), act_buf.reshape(-1)
        b_logp, b_adv, b_ret = logp_buf.reshape(-1), adv.reshape(-1), ret.reshape(-1)
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(batch)
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
        elapsed = time.perf_counter() - t_start
        sps = (global_step - steps_at_start) / max(elapsed, 1e-9)
        row = {
            "update": update,
            "step": global_step,
            "steps_per_s": round(sps),
            "reward_per_minute": reward_ema,
            "loss": float(loss.detach()),
            "value_loss": float(v_loss.detach()),
            "entropy": float(dist.entropy().mean().detach()),
        }
        final = update == num_updates or (budget_seconds is not None and elapsed >= budget_seconds)
        if val_runs and (update % cfg.eval_every_updates == 0 or final):
            last_val = validate()
            if cfg.keep_best and (not best or last_val["pct_of_oracle"] > best["validation"]["pct_of_oracle"]):
                best = {"update": update, "validation": last_val, "actor": copy.deepcopy(agent.actor.state_dict())}
            row["val_pct_of_oracle"] = last_val["pct_of_oracle"]
            row["val_downtime_minutes"] = last_val["downtime_minutes"]
        log_rows.append(row)
        with log_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if bar is not None:
            pct = f" val {last_val['pct_of_oracle']:.1f}% of oracle" if last_val else ""
            bar.update(global_step - bar.n, postfix=f"reward {reward_ema * 10_000:,.0f} $/10k min{pct}")
        if update % 20 == 0 or final:
            torch.save(
                {
                    "agent": agent.state_dict(),
                    "optimizer": opt.state_dict(),
                    "update": update,
                    "global_step": global_step,
                    "config": asdict(cfg),
                    "torch_rng": torch.get_rng_state(),
                    "start": start,
                    "best": best,
                },
                ckpt,
            )
        if final:
            break
    if bar is not None:
        bar.close()
    _plot_curve(log_rows, out / "learning_curve.png")
    selected = None
    if best:
        agent.actor.load_state_dict(best["actor"])
        last_val, selected = best["validation"], best["update"]
        if progress:
            print(
                f"kept the actor of update {selected} (validation {last_val['pct_of_oracle']:.2f}% of oracle; "
                "update 0 is the imitated starting rule)",
                file=sys.stderr,
            )
    return {
        "agent": agent,
        "mapping": mapping,
        "validation": last_val,
        "steps": global_step,
        "start_rule": start,
        "selected_update": selected,
    }
