"""The backtest harness: every policy replayed on the same loads with the same capacity noise.

For each load (a synthetic seed or a trace window) and each policy, the fleet is simulated minute by minute
(`simulate`); realized profit uses the common capacity noise of that load, and the expected profit sums
`expected_reward` along the policy's own fleet sizes, so luck does not decide a comparison. The oracle is the
hindsight dynamic program of `training.oracle`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from fleetpilot.policies.base import Policy
from fleetpilot.policies.observation import ObservationBuilder
from fleetpilot.sim.fleet import FleetCore, expected_reward, standard_normal_at
from fleetpilot.sim.load import SYNTHETIC_START, Load, synthetic_load
from fleetpilot.sim.params import FleetParams, SyntheticLoadParams
from fleetpilot.training.oracle import oracle_fleet

ORACLE = "oracle"


@dataclass
class Run:
    """One load to replay: `load_tpm` has lead + minutes + 1 values; minute `lead` is observed at the start of
    scoring, the `minutes` after it are scored; the lead-in minutes before are simulated but not scored."""

    name: str
    load_tpm: np.ndarray
    start_minute: int
    noise_key: int
    lead: int = 0

    @property
    def minutes(self) -> int:
        return int(self.load_tpm.shape[0]) - 1 - self.lead


@dataclass
class Trajectory:
    """Per scored minute, (N, T): active machines, deltas applied, realized capacity and downtime."""

    active: np.ndarray
    delta: np.ndarray
    capacity: np.ndarray
    down: np.ndarray
    desired: np.ndarray


@dataclass
class Result:
    policy: str
    profit_usd: float
    expected_profit_usd: float
    revenue_usd: float
    machine_cost_usd: float
    downtime_minutes: int
    failed_transactions: float
    machine_minutes: int
    scaling_actions: int


@dataclass
class Report:
    runs: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    trajectories: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # run name -> policy -> active
    forecast: dict | None = None  #: the forecast's error over all runs (`backtest(..., forecast=True)`)

    def to_json(self) -> dict:
        out: dict = {"runs": self.runs, "summary": self.summary}
        if self.forecast is not None:
            out["forecast"] = self.forecast
        return out


def synthetic_streams(seed: int) -> tuple[np.random.Generator, int]:
    """Seed s: the load's generator from child 0 of SeedSequence(s), the capacity-noise key from child 1."""
    load_ss, noise_ss = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(load_ss), int(noise_ss.generate_state(1, dtype=np.uint64)[0])


def synthetic_run(
    seed: int, minutes: int, params: SyntheticLoadParams | None = None, max_load_tpm: float = 100_000.0
) -> Run:
    """Seed s's load (`minutes` + 1 values, `synthetic_streams`) with its capacity-noise key."""
    rng, key = synthetic_streams(seed)
    load = synthetic_load(rng, minutes + 1, params, max_load_tpm)
    return Run(f"synthetic-{seed}", load, int(SYNTHETIC_START.timestamp() // 60), key)


def trace_run(load: Load, first: int, minutes: int, lead: int) -> Run:
    """Score `minutes` minutes of `load` after minute `first` (observed), with up to `lead` minutes before."""
    lead = min(lead, first)
    part = load.load_tpm[first - lead : first + minutes + 1]
    tag = f"{load.name}:{first}:{minutes}".encode()
    key = int.from_bytes(hashlib.sha256(tag).digest()[:8], "little")
    return Run(
        f"{load.name}[{first}:{first + minutes + 1}]",
        part.astype(np.float64),
        load.start_minute() + first - lead,
        key,
        lead,
    )


def simulate(
    policy: Policy, loads: np.ndarray, start_minutes: np.ndarray, noise_keys: np.ndarray, params: FleetParams
) -> Trajectory:
    """Replay `policy` on N loads at once. loads: (N, T + 1); minute 0 is observed, minutes 1..T are served.

    Per minute: observe, decide a desired capacity, apply delta = clip(desired - (active + warming)) to the
    fleet, serve the load. This loop is the reference the daemon's decisions are tested against.
    """
    return simulate_many([policy], loads, start_minutes, noise_keys, params)[0]


def simulate_many(
    policies: Sequence[Policy],
    loads: np.ndarray,
    start_minutes: np.ndarray,
    noise_keys: np.ndarray,
    params: FleetParams,
    on_minute: Callable[[int, int], object] | None = None,
) -> list[Trajectory]:
    """`simulate` for each of P policies on the same N loads, each on its own fleets (the same capacity noise):
    one observation builder for the loads, one fleet core of P x N fleets. Each trajectory equals `simulate`'s
    for that policy alone (`ObservationBuilder.observations`). `on_minute(t, T)` after each simulated minute.
    A policy keeps per-fleet state (`reset(N)`): one instance cannot replay two fleets, so each is given once."""
    if len({id(pol) for pol in policies}) != len(policies):
        raise ValueError("simulate_many: a policy instance is given twice (it keeps one state per fleet)")
    if not policies:
        return []
    loads = np.atleast_2d(np.asarray(loads, dtype=np.float64))
    n, t_len, k = loads.shape[0], loads.shape[1] - 1, len(policies)
    starts = np.broadcast_to(np.asarray(start_minutes, dtype=np.int64), (n,))
    core = FleetCore(k * n, params)
    core.reset(slice(None), np.tile(np.broadcast_to(np.asarray(noise_keys, dtype=np.uint64), (n,)), k))
    builder = ObservationBuilder(n, params.capacity_tpm_per_machine, params.warmup_minutes)
    builder.update(loads[:, 0], core.active[:n], core.warming[:n], starts)
    for policy in policies:
        policy.reset(n)
    traj = Trajectory(*(np.zeros((k * n, t_len), dtype=dt) for dt in (np.int64, np.int64, np.float64, bool, np.int64)))
    lo, hi = -params.max_scale_in_per_minute, params.max_scale_out_per_minute
    parts = [slice(i * n, (i + 1) * n) for i in range(k)]
    for t in range(1, t_len + 1):
        warming = core.warming
        # one policy: the builder holds its fleet's machines (the update below)
        obs = [builder.observation()] if k == 1 else builder.observations([(core.active[s], warming[s]) for s in parts])
        desired = np.concatenate([np.asarray(pol.decide(o).desired) for pol, o in zip(policies, obs, strict=True)])
        delta = np.clip(desired - (core.active + warming), lo, hi)
        out = core.step(delta, np.tile(loads[:, t], k))
        builder.update(loads[:, t], out.active[:n], core.warming[:n], starts + t)
        traj.active[:, t - 1] = out.active
        traj.delta[:, t - 1] = delta
        traj.capacity[:, t - 1] = out.capacity_tpm
        traj.down[:, t - 1] = out.down
        traj.desired[:, t - 1] = desired
        if on_minute is not None:
            on_minute(t, t_len)
    return [Trajectory(**{f.name: getattr(traj, f.name)[part].copy() for f in fields(traj)}) for part in parts]


def score(
    policy: str,
    active: np.ndarray,
    delta: np.ndarray,
    load: np.ndarray,
    noise_key: int,
    first_minute: int,
    p: FleetParams,
) -> Result:
    """Realized and expected profit of one fleet-size path (1-D arrays over the scored minutes).
    `first_minute` is the fleet-core minute counter of the first scored minute (for the common noise)."""
    minutes = np.arange(first_minute, first_minute + load.shape[0])
    x = p.capacity_tpm_per_machine + p.capacity_sigma_tpm * standard_normal_at(
        np.full(load.shape[0], noise_key, dtype=np.uint64), minutes
    )
    cap = np.maximum(np.trunc(active * x), 0.0)
    served = np.minimum(load, cap)
    down = (load > 0) & (served < p.downtime_served_share * load)
    revenue = float(served.sum() * p.revenue_usd_per_1k_transactions / 1000.0)
    machine_cost = float(active.sum() * p.machine_cost_usd_per_minute)
    penalty = float(down.sum() * p.downtime_cost_usd_per_minute)
    return Result(
        policy=policy,
        profit_usd=round(revenue - machine_cost - penalty, 2),
        expected_profit_usd=round(float(expected_reward(active, load, p).sum()), 2),
        revenue_usd=round(revenue, 2),
        machine_cost_usd=round(machine_cost, 2),
        downtime_minutes=int(down.sum()),
        failed_transactions=float(load.sum() - served.sum()),
        machine_minutes=int(active.sum()),
        scaling_actions=int(np.count_nonzero(delta)),
    )


def backtest(
    runs: list[Run],
    policies: dict[str, Policy | None],
    params: FleetParams | None = None,
    forecast: bool = False,
    progress: Callable[[int], object] | None = None,
) -> Report:
    """Replay every policy (None stands for the oracle) on every run; runs of equal shape are one batch, replayed
    for all policies at once (`simulate_many`). With `forecast`, each run also reports the error of
    `policies.forecast` one warm-up ahead over its scored minutes (`forecast_errors`). `progress(n)`: n more
    (run, policy) pairs done, len(runs) * len(policies) in all; the pairs of a batch's replayed policies are
    counted as its minutes go by, the oracle's when it is solved."""
    p = params or FleetParams()
    results: dict[int, list[Result]] = {i: [] for i in range(len(runs))}
    actives: dict[int, dict[str, np.ndarray]] = {i: {} for i in range(len(runs))}
    groups: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault((r.load_tpm.shape[0], r.lead), []).append(i)
    for (_, lead), idx in groups.items():
        loads = np.stack([runs[i].load_tpm for i in idx])
        keys = np.array([runs[i].noise_key for i in idx], dtype=np.uint64)
        starts = np.array([runs[i].start_minute for i in idx], dtype=np.int64)
        # each policy instance once (one given under two names is replayed once, as it was alone)
        unique = list({id(pol): pol for pol in policies.values() if pol is not None}.values())
        spread = _Spread(progress, len(idx) * sum(pol is not None for pol in policies.values()))
        replays = dict(zip(map(id, unique), simulate_many(unique, loads, starts, keys, p, spread), strict=True))
        spread.finish()
        trajs = {name: replays[id(pol)] for name, pol in policies.items() if pol is not None}
        for name in policies:
            if name in trajs:
                active, delta = trajs[name].active[:, lead:], trajs[name].delta[:, lead:]
            else:
                active, delta = _oracle(loads, lead, p)
            for j, i in enumerate(idx):
                results[i].append(score(name, active[j], delta[j], loads[j, lead + 1 :], int(keys[j]), lead + 1, p))
                actives[i][name] = active[j]
            if progress is not None and name not in trajs:
                progress(len(idx))
    report = Report()
    for i, r in enumerate(runs):
        report.runs.append({"load": r.name, "minutes": r.minutes, "results": [asdict(x) for x in results[i]]})
        report.trajectories[r.name] = {"load_tpm": r.load_tpm[r.lead + 1 :], **actives[i]}
    report.summary = summarize(report.runs, ORACLE in policies)
    if forecast:
        report.forecast = forecast_errors(runs, report.runs, p.warmup_minutes)
    return report


class _Spread:
    """`simulate_many`'s `on_minute` that reports `units` of `progress` spread over the minutes; `finish()`
    reports what is left (a replay of no minutes)."""

    def __init__(self, progress: Callable[[int], object] | None, units: int):
        self.progress, self.units, self.done = progress, units, 0

    def _to(self, now: int) -> None:
        if self.progress is not None and now > self.done:
            self.progress(now - self.done)
            self.done = now

    def __call__(self, t: int, t_len: int) -> None:
        self._to(self.units * t // t_len)

    def finish(self) -> None:
        self._to(self.units)


def forecast_errors(runs: list[Run], rows: list[dict], horizon: int) -> dict:
    """Adds `forecast` to each run's row: the point forecast's MAE / mean load `horizon` minutes ahead over the
    run's scored minutes (and the naive last-minute forecast's, for reference); returns the same over all runs
    (errors and loads summed over all runs before dividing)."""
    from fleetpilot.policies.forecast import Forecaster, forecast_error

    f = Forecaster(horizon)
    err = naive = total = 0.0
    for run, row in zip(runs, rows, strict=True):
        e = forecast_error(run.load_tpm, run.lead, horizon, f)
        row["forecast"] = {k: e[k] for k in ("horizon_minutes", "mae_over_mean_load", "naive_mae_over_mean_load")}
        err, naive, total = err + e["abs_error"], naive + e["naive_abs_error"], total + e["load"]
    ok = total > 0
    return {
        "horizon_minutes": horizon,
        "mae_over_mean_load": round(err / total, 4) if ok else None,
        "naive_mae_over_mean_load": round(naive / total, 4) if ok else None,
    }


def _oracle(loads: np.ndarray, lead: int, p: FleetParams) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's fleet over the scored minutes; during a lead-in it starts from the seed's initial fleet
    and may grow at once (a policy had the lead-in to get there)."""
    served = loads[:, lead + 1 :]
    first_increase = p.warmup_minutes if lead == 0 else 0
    active = oracle_fleet(served, p, first_increase=first_increase)
    prev = np.concatenate([np.full((active.shape[0], 1), p.initial_machines), active[:, :-1]], axis=1)
    return active, active - prev


def summarize(runs: list[dict], with_oracle: bool) -> list[dict]:
    names = [r["policy"] for r in runs[0]["results"]] if runs else []
    out = []
    oracle_e = sum(x["expected_profit_usd"] for r in runs for x in r["results"] if x["policy"] == ORACLE)
    for name in names:
        rows = [x for r in runs for x in r["results"] if x["policy"] == name]
        e = sum(x["expected_profit_usd"] for x in rows)
        item = {
            "policy": name,
            "profit_usd": round(sum(x["profit_usd"] for x in rows), 2),
            "expected_profit_usd": round(e, 2),
            "downtime_minutes": int(sum(x["downtime_minutes"] for x in rows)),
        }
        if with_oracle:
            item["pct_of_oracle"] = round(100.0 * e / oracle_e, 2) if oracle_e > 0 else None
        out.append(item)
    return out


def format_table(report: Report, per_run: bool = False) -> str:
    """The summary as a fixed-width table (one line per policy); with `per_run`, one table per run first."""
    parts = []
    if per_run:
        for r in report.runs:
            one = Report(runs=[r], summary=summarize([r], any(x["policy"] == ORACLE for x in r["results"])))
            one.forecast = r.get("forecast") if report.forecast is not None else None
            parts.append(f"== {r['load']}\n" + format_table(one))
        parts.append("== all runs")
    minutes = sum(r["minutes"] for r in report.runs)
    lines = [
        f"{len(report.runs)} run(s), {minutes} scored minutes",
        f"{'policy':<28} {'profit $':>12} {'E[profit] $':>12} {'% oracle':>9} {'downtime min':>13} {'machine-min':>12}",
    ]
    machine_minutes = {
        s["policy"]: sum(x["machine_minutes"] for r in report.runs for x in r["results"] if x["policy"] == s["policy"])
        for s in report.summary
    }
    for s in report.summary:
        pct = s.get("pct_of_oracle")
        lines.append(
            f"{s['policy']:<28} {s['profit_usd']:>12,.0f} {s['expected_profit_usd']:>12,.0f} "
            f"{(f'{pct:.1f}' if pct is not None else '-'):>9} {s['downtime_minutes']:>13} "
            f"{machine_minutes[s['policy']]:>12,}"
        )
    if report.forecast is not None:
        h = report.forecast["horizon_minutes"]
        lines.append(f"forecast error {h} minutes ahead (MAE / mean load; the last minute's load as the forecast):")
        for r in report.runs:
            f = r.get("forecast", {})
            lines.append(
                f"  {r['load']:<40} {_pct(f.get('mae_over_mean_load'))} ({_pct(f.get('naive_mae_over_mean_load'))})"
            )
        if len(report.runs) > 1:
            f = report.forecast
            lines.append(f"  {'all runs':<40} {_pct(f['mae_over_mean_load'])} ({_pct(f['naive_mae_over_mean_load'])})")
    return "\n".join(parts + ["\n".join(lines)])


def _pct(x: float | None) -> str:
    return f"{100 * x:6.2f}%" if x is not None else "     -"


def write_json(report: Report, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_json(), indent=2) + "\n")


def plot(
    report: Report, path: str | Path, params: FleetParams | None = None, max_runs: int = 3, max_minutes: int = 2880
) -> None:
    """Load (as capacity needed) and capacity per policy for the first runs; downtime marked with x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = params or FleetParams()
    names = list(report.trajectories)[:max_runs]
    fig, axes = plt.subplots(len(names), 1, figsize=(12, 3.2 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=False):
        tr = report.trajectories[name]
        load = tr["load_tpm"][:max_minutes]
        t = np.arange(load.shape[0])
        ax.plot(t, load, color="black", lw=0.8, label="load (tpm)")
        for pol, active in tr.items():
            if pol == "load_tpm":
                continue
            a = active[:max_minutes]
            (line,) = ax.plot(t, a * p.capacity_tpm_per_machine, lw=0.9, label=f"{pol} capacity")
            short = load > p.downtime_served_share * a * p.capacity_tpm_per_machine
            ax.plot(t[short], load[short], "x", color=line.get_color(), ms=5)
        ax.set_title(f"{name} (first {load.shape[0]} minutes; x = load above the mean capacity)")
        ax.set_xlabel("minute")
        ax.set_ylabel("transactions / minute")
        ax.legend(loc="upper right", fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _backtest_named(
    names: list[str],
    params: FleetParams | None,
    runs: list[Run],
    forecast: bool = False,
    progress: Callable[[int], object] | None = None,
) -> Report:
    """One fan-out task: the policies built by name where the task runs (an ONNX session does not travel)."""
    from fleetpilot.policies.registry import make_policy

    policies = {n: (None if n == ORACLE else make_policy(n)) for n in names}
    return backtest(runs, policies, params, forecast=forecast, progress=progress)


def backtest_fanout(
    runs: list[Run],
    names: list[str],
    params: FleetParams | None = None,
    ray_address: str | None = None,
    forecast: bool = False,
    progress: Callable[[int], object] | None = None,
) -> Report:
    """`backtest` of the policies `names` (ORACLE for the oracle) on `runs`; with `ray_address`, one Ray task per
    run, merged in the runs' order. In this process all runs stay one batch (`simulate` is vectorized over
    runs); each run's rows are independent of the others in the batch, so both give the same report.
    `forecast` and `progress` as in `backtest` (on Ray, progress counts a run's policies when its task ends and
    the forecast errors are computed here, from the runs' loads)."""
    if ray_address is None:
        return _backtest_named(list(names), params, runs, forecast=forecast, progress=progress)
    import functools

    from fleetpilot.training.fanout import map_tasks, values

    fn = functools.partial(_backtest_named, list(names), params)
    on_done = (lambda _i, _o: progress(len(names))) if progress is not None else None
    parts: list[Report] = values(map_tasks(fn, [[r] for r in runs], ray_address, on_done), "backtest")
    report = Report()
    for part in parts:
        report.runs += part.runs
        report.trajectories.update(part.trajectories)
    report.summary = summarize(report.runs, ORACLE in names)
    if forecast:
        report.forecast = forecast_errors(runs, report.runs, (params or FleetParams()).warmup_minutes)
    return report
