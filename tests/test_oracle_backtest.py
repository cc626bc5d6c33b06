"""The hindsight oracle and the backtest harness (issue 2): the oracle bounds every rule, respects the fleet's
limits and matches brute force; expected_reward matches Monte Carlo of the fleet core; the JSON has the issue's
shape; common random numbers make runs repeatable."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from fleetpilot.policies.observation import FEATURE_INDEX, ObservationBuilder
from fleetpilot.policies.registry import make_policy
from fleetpilot.sim.fleet import FleetCore, expected_reward, standard_normal_at
from fleetpilot.sim.load import read_trace
from fleetpilot.sim.params import FleetParams
from fleetpilot.training.backtest import (
    ORACLE,
    backtest,
    simulate,
    simulate_many,
    synthetic_run,
    trace_run,
    write_json,
)
from fleetpilot.training.oracle import oracle_fleet

RULES = ("static", "target-tracking", "step", "predictive", "cushion")
TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"  # the repository's ../shared
RESULT_KEYS = {
    "policy",
    "profit_usd",
    "expected_profit_usd",
    "revenue_usd",
    "machine_cost_usd",
    "downtime_minutes",
    "failed_transactions",
    "machine_minutes",
    "scaling_actions",
}


def _policies(with_oracle: bool = True) -> dict:
    pols = {name: make_policy(name) for name in RULES}
    if with_oracle:
        pols[ORACLE] = None
    return pols


def _assert_oracle_bounds(report) -> None:
    for run in report.runs:
        e = {r["policy"]: r["expected_profit_usd"] for r in run["results"]}
        for name in RULES:
            assert e[ORACLE] >= e[name] - 0.01, (run["load"], name, e)
    pct = {s["policy"]: s["pct_of_oracle"] for s in report.summary}
    assert pct[ORACLE] == 100.0
    assert all(pct[name] <= 100.0 for name in RULES)


@pytest.fixture(scope="module")
def synthetic_report():
    return backtest([synthetic_run(s, 2000) for s in (101, 102, 103)], _policies())


def test_oracle_beats_every_rule_on_synthetic_loads(synthetic_report):
    _assert_oracle_bounds(synthetic_report)
    # and the bound is not vacuous: a tuned rule comes reasonably close, the seed's fixed fleet does not
    pct = {s["policy"]: s["pct_of_oracle"] for s in synthetic_report.summary}
    assert pct["target-tracking"] > 60.0
    assert pct["static"] < pct["target-tracking"]


def test_oracle_beats_every_rule_on_rescaled_real_traces():
    # NASA (flash crowd of 13 July inside the window) and WorldCup98, rescaled so that the peak needs about
    # 40 machines; 1,500 minutes of lead-in give the predictive rule its day-ago history when scoring starts.
    # Runs of equal length are replayed as one batch.
    nasa = read_trace(f"{TRACES}/nasa_http_jul95_minute.csv").rescaled(12_000.0)
    cup = read_trace(f"{TRACES}/worldcup98_pre_tournament_minute.csv").rescaled(12_000.0)
    flash = int(np.argmax(nasa.load_tpm))
    runs = [trace_run(nasa, flash - 600, 1200, lead=1500), trace_run(cup, 30_000, 1200, lead=1500)]
    assert all(r.lead == 1500 and r.minutes == 1200 for r in runs)
    report = backtest(runs, _policies())
    _assert_oracle_bounds(report)


def _check_path(path: np.ndarray, p: FleetParams, initial: int, first_up: int) -> None:
    full = np.concatenate([[initial], path])
    d = np.diff(full)
    assert d.max() <= p.max_scale_out_per_minute and d.min() >= -p.max_scale_in_per_minute
    assert (d[:first_up] <= 0).all()  # nothing ordered can arrive before the warm-up has passed
    assert path.min() >= 0 and path.max() <= p.max_machines


def test_oracle_path_respects_step_limits_and_warmup():
    p = FleetParams(max_scale_out_per_minute=3, max_scale_in_per_minute=2, warmup_minutes=4)
    t = np.arange(1500)
    loads = (3000.0 + 22_000.0 * np.sin(np.pi * t / 1500) ** 4)[None, :]  # needs ~10 to ~90 machines
    path = oracle_fleet(loads, p)[0]
    _check_path(path, p, p.initial_machines, p.warmup_minutes)
    # it does move: up for the peaks, down in the troughs
    assert path.max() > p.initial_machines and path.min() < p.initial_machines
    default = FleetParams()
    for s in (1, 2):
        path = oracle_fleet(synthetic_run(s, 1500).load_tpm[1:], default)[0]
        _check_path(path, default, default.initial_machines, default.warmup_minutes)


def test_oracle_matches_brute_force_on_a_tiny_problem():
    p = FleetParams(
        initial_machines=3, max_machines=8, max_scale_out_per_minute=2, max_scale_in_per_minute=2, warmup_minutes=2
    )
    rng = np.random.default_rng(4)
    for trial in range(3):
        load = np.floor(rng.uniform(0, 2400, size=8))
        load[rng.integers(0, 8)] = 0.0
        table = expected_reward(np.arange(p.max_machines + 1)[:, None].astype(float), load[None, :], p)  # (n, t)
        best = -np.inf
        for steps in itertools.product(range(-2, 3), repeat=8):
            n, total, ok = p.initial_machines, 0.0, True
            for t, s in enumerate(steps):
                n += s
                if n < 0 or n > p.max_machines or (t < p.warmup_minutes and s > 0):
                    ok = False
                    break
                total += table[n, t]
            if ok:
                best = max(best, total)
        path = oracle_fleet(load[None, :], p)[0]
        _check_path(path, p, p.initial_machines, p.warmup_minutes)
        got = float(expected_reward(path.astype(float), load, p).sum())
        assert got == pytest.approx(best, abs=1e-9), (trial, path, got, best)


@pytest.mark.parametrize(
    "machines, load",
    [
        (50, 10_000.0),
        (50, 14_500.0),
        (50, 14_900.0),
        (50, 15_000.0),
        (50, 16_000.0),
        (50, 25_000.0),
        (1, 250.0),
        (7, 2_100.0),
        (0, 100.0),
        (30, 0.0),
    ],
)
def test_expected_reward_matches_monte_carlo_of_the_fleet_core(machines, load):
    p = FleetParams(initial_machines=machines)
    n = 100_000
    core = FleetCore(n, p)
    core.reset(slice(None), np.random.default_rng(machines).integers(0, 2**63, size=n, dtype=np.uint64))
    out = core.step(np.zeros(n, dtype=np.int64), np.full(n, load))
    mc = out.reward.mean()
    se = out.reward.std() / np.sqrt(n)
    e = float(expected_reward(np.array(float(machines)), np.array(load), p))
    # 5 standard errors, plus the $0.0005 the floor of the capacity is worth at most
    assert abs(mc - e) <= 5 * se + 1e-3, (mc, e, se)


def test_backtest_json_has_the_issue_shape(tmp_path, synthetic_report):
    path = tmp_path / "out.json"
    write_json(synthetic_report, path)
    doc = json.loads(path.read_text())
    assert set(doc) == {"runs", "summary"}
    assert len(doc["runs"]) == 3
    for run in doc["runs"]:
        assert set(run) == {"load", "minutes", "results"}
        assert isinstance(run["load"], str) and run["minutes"] == 2000
        assert [r["policy"] for r in run["results"]] == [*RULES, ORACLE]
        for r in run["results"]:
            assert set(r) == RESULT_KEYS
            for k in ("downtime_minutes", "machine_minutes", "scaling_actions"):
                assert isinstance(r[k], int)
            for k in ("profit_usd", "expected_profit_usd", "revenue_usd", "machine_cost_usd", "failed_transactions"):
                assert isinstance(r[k], (int, float))
    assert [s["policy"] for s in doc["summary"]] == [*RULES, ORACLE]
    for s in doc["summary"]:
        assert set(s) == {"policy", "profit_usd", "expected_profit_usd", "pct_of_oracle", "downtime_minutes"}
        rows = [r for run in doc["runs"] for r in run["results"] if r["policy"] == s["policy"]]
        assert s["expected_profit_usd"] == pytest.approx(sum(r["expected_profit_usd"] for r in rows), abs=0.02)
        assert s["downtime_minutes"] == sum(r["downtime_minutes"] for r in rows)


def test_pct_of_oracle_only_with_the_oracle():
    report = backtest([synthetic_run(5, 300)], {"static": make_policy("static")})
    assert set(report.to_json()["summary"][0]) == {"policy", "profit_usd", "expected_profit_usd", "downtime_minutes"}


def test_common_random_numbers_make_runs_repeatable():
    runs = [synthetic_run(s, 1500) for s in (11, 12)]
    twice = {"a": make_policy("target-tracking"), "b": make_policy("target-tracking")}
    report = backtest(runs, twice)
    for run in report.runs:
        a, b = run["results"]
        assert {**a, "policy": "-"} == {**b, "policy": "-"}
    again = backtest([synthetic_run(s, 1500) for s in (11, 12)], {"a": make_policy("target-tracking")})
    assert [r["results"][0] for r in again.runs] == [r["results"][0] for r in report.runs]
    # a different seed is a different load and different noise
    other = backtest([synthetic_run(13, 1500)], {"a": make_policy("target-tracking")})
    assert other.runs[0]["results"][0] != report.runs[0]["results"][0]


def test_policies_replayed_together_decide_as_each_does_alone():
    """A backtest replays its policies together (one observation builder, one fleet core of P x N fleets): each
    policy's trajectory equals its replay alone, array for array, also for policies that share the newsvendor
    memo (the rule and the shipped model's newsvendor actions) and with a lead-in."""
    p = FleetParams()
    load = read_trace(TRACES / "nasa_http_jul95_minute.csv").rescaled(8000.0)
    runs = [trace_run(load, 3000 + 1500 * i, 1200, lead=400) for i in range(3)]
    loads = np.stack([r.load_tpm for r in runs])
    keys = np.array([r.noise_key for r in runs], dtype=np.uint64)
    starts = np.array([r.start_minute for r in runs], dtype=np.int64)
    names = ["newsvendor", "target-tracking", "default", "cushion", "step"]  # the model reads features: not first
    together = simulate_many([make_policy(n) for n in names], loads, starts, keys, p)
    for name, traj in zip(names, together, strict=True):
        alone = simulate(make_policy(name), loads, starts, keys, p)
        for f in ("active", "delta", "capacity", "down", "desired"):
            np.testing.assert_array_equal(getattr(traj, f), getattr(alone, f), err_msg=f"{name}: {f}")
    assert len({traj.active.tobytes() for traj in together}) == len(names)  # five different fleets
    # one instance keeps one state per fleet: it is replayed once, under each of its names
    step = make_policy("step")
    with pytest.raises(ValueError, match="given twice"):
        simulate_many([step, step], loads, starts, keys, p)
    twice = backtest(runs[:1], {"a": step, "b": step}).runs[0]["results"]
    alone = backtest(runs[:1], {"a": make_policy("step")}).runs[0]["results"][0]
    assert {**twice[0], "policy": "-"} == {**twice[1], "policy": "-"} == {**alone, "policy": "-"}


def test_one_minutes_observations_of_several_fleets_are_each_fleets_own():
    """`ObservationBuilder.observations`: each fleet's observation (`Observation.with_machines` of the minute's)
    has the bytes of the builder's own observation with that fleet's machines (`set_machines`), and its machine
    features are active / R, warming / R and load / (capacity x active), at most 5, clipped to 10."""
    rng = np.random.default_rng(3)
    b = ObservationBuilder(4, 1000.0, 5)
    for t in range(300):
        b.update(rng.gamma(2.0, 3000.0, 4), rng.integers(0, 40, 4), rng.integers(0, 5, 4), np.full(4, 10_000 + t))
    fleets = [(rng.integers(0, 90, 4), rng.integers(0, 9, 4)) for _ in range(3)]
    fleets.append((np.array([0, 1, 4000, 2]), np.array([0, 3000, 0, 1])))  # none, and past the clip
    many = b.observations(fleets)
    col = {k: FEATURE_INDEX[k] for k in ("active", "warming", "util")}
    for (active, warming), obs in zip(fleets, many, strict=True):
        b.set_machines(active, warming)
        own = b.observation()
        np.testing.assert_array_equal(obs.features, own.features)
        np.testing.assert_array_equal(obs.active, active)
        np.testing.assert_array_equal(obs.warming, warming)
        r = own.load_scale_machines
        util = np.minimum(own.load_tpm / 1000.0 / np.maximum(active, 1), 5.0)
        for k, v in (("active", active / r), ("warming", warming / r), ("util", util)):
            np.testing.assert_array_equal(obs.features[:, col[k]], np.clip(v, -10, 10).astype(np.float32), err_msg=k)
    assert len({obs.features.tobytes() for obs in many}) == len(fleets)
    assert many[0].memo is many[1].memo  # what does not read the machines is computed once a minute


def test_progress_of_policies_replayed_together_moves_with_the_minutes():
    """Policies replayed together report their (run, policy) pairs as the minutes go by, not all at the end; the
    oracle's when it is solved; len(runs) x len(policies) in all."""
    decisions = []

    class Counting:
        name = "counting"

        def __init__(self):
            self.rule = make_policy("target-tracking")

        def reset(self, n):
            self.rule.reset(n)

        def decide(self, obs):
            decisions.append(1)
            return self.rule.decide(obs)

    seen = []
    runs = [synthetic_run(s, 400) for s in (5, 6)]
    backtest(
        runs,
        {"a": Counting(), "b": make_policy("step"), ORACLE: None},
        progress=lambda n: seen.append((n, len(decisions))),
    )
    assert sum(n for n, _ in seen) == 2 * 3
    # 2 runs x 2 replayed policies over 400 minutes: a pair each 100 minutes (one decision a minute for both
    # runs), then the oracle's two runs
    assert seen == [(1, 100), (1, 200), (1, 300), (1, 400), (2, 400)]


def test_every_policy_sees_the_same_capacity_per_machine():
    """The realized capacity of each minute is trunc(active x x_t) with x_t common to all policies, and the
    score recomputes exactly what the simulation served."""
    p = FleetParams()
    run = synthetic_run(21, 800)
    loads, keys = run.load_tpm[None, :], np.array([run.noise_key], dtype=np.uint64)
    minutes = np.arange(1, 801)
    x = p.capacity_tpm_per_machine + p.capacity_sigma_tpm * standard_normal_at(np.full(800, keys[0]), minutes)
    seen = []
    for name in ("static", "target-tracking", "step"):
        traj = simulate(make_policy(name), loads, np.array([run.start_minute]), keys, p)
        np.testing.assert_array_equal(traj.capacity[0], np.maximum(np.trunc(traj.active[0] * x), 0.0))
        seen.append(traj.active[0])
        one = backtest([run], {name: make_policy(name)}).runs[0]["results"][0]
        assert one["downtime_minutes"] == int(traj.down[0].sum())
        assert one["machine_minutes"] == int(traj.active[0].sum())
    assert not np.array_equal(seen[0], seen[1])  # different fleets, same per-machine draws


def test_expected_profit_is_the_sum_of_expected_rewards_along_the_path(synthetic_report):
    p = FleetParams()
    run = synthetic_run(101, 2000)
    tr = synthetic_report.trajectories[run.name]
    for name in (*RULES, ORACLE):
        e = float(expected_reward(tr[name], run.load_tpm[1:], p).sum())
        got = next(r for r in synthetic_report.runs[0]["results"] if r["policy"] == name)
        assert got["expected_profit_usd"] == pytest.approx(e, abs=0.01)


def test_the_cushion_rule_is_one_action_of_the_learned_policies_mapping():
    from fleetpilot.policies.actions import ActionMapping
    from fleetpilot.policies.cushion import CushionParams, CushionPolicy
    from fleetpilot.policies.observation import ObservationBuilder

    rng = np.random.default_rng(3)
    b = ObservationBuilder(64, 300.0, 5)
    for minute in range(1, 30):
        b.update(rng.uniform(500, 9000, 64), rng.integers(1, 60, 64), rng.integers(0, 10, 64), np.full(64, minute))
    obs = b.observation()
    m = ActionMapping()
    for u, c in ((0.76, 0.18), (0.6, 0.05)):  # both on the grid
        rule = CushionPolicy(CushionParams(utilization=u, cushion_day_max_share=c))
        k = np.full(64, m.index(u, c))
        assert np.array_equal(rule.decide(obs).desired, m.desired(k, obs))


def test_tune_reports_the_profit_downtime_frontier(monkeypatch):
    from fleetpilot.training import tune as tune_mod

    monkeypatch.setitem(
        tune_mod.GRIDS, "cushion", {"utilization": [0.6, 0.7, 0.8, 0.9], "cushion_day_max_share": [0.0, 0.1, 0.2]}
    )
    out = tune_mod.tune("cushion", [synthetic_run(s, 1500) for s in (5, 6)])
    front = out["frontier"]
    assert front[0]["params"] == out["params"]
    e = [x["expected_profit_usd"] for x in front]
    d = [x["downtime_minutes"] for x in front]
    assert e == sorted(e, reverse=True) and all(a > b for a, b in zip(d, d[1:], strict=False))
    assert front[-1]["downtime_minutes"] <= min(x["downtime_minutes"] for x in out["top5"])
    # every grid point is matched or beaten by a frontier point on both counts
    for top in out["top5"]:
        assert any(
            f["expected_profit_usd"] >= top["expected_profit_usd"] and f["downtime_minutes"] <= top["downtime_minutes"]
            for f in front
        )


def test_the_cushion_rule_takes_its_jump_pair_inside_the_jump_window_only():
    from fleetpilot.policies.actions import ActionMapping
    from fleetpilot.policies.cushion import CushionParams, CushionPolicy
    from fleetpilot.policies.observation import ObservationBuilder

    b = ObservationBuilder(3, 300.0, 5)
    for minute in range(200):  # all fall from 6,000 to 2,000 tpm at 50; groups 0 and 2 jump to 3,500 at 100,
        flat = 6000.0 if minute < 50 else 2000.0  # and group 2 rises again, to 4,000, at 130 (a re-rise)
        up = 3500.0 if minute >= 100 else flat
        b.update(np.array([up, flat, 4000.0 if minute >= 130 else up]), np.full(3, 20), np.zeros(3), np.full(3, minute))
        obs = b.observation()
        age = obs.jump_age_minutes
        if minute < 100:
            assert (age > 1000).all()
            continue
        rule = CushionPolicy(CushionParams(jump_window_minutes=60))
        m = ActionMapping((0.76, 0.64), (0.18, 0.0), 3, 1.1)
        quiet = obs.rerise_age_minutes >= 4320
        want = np.where((age < 60) & quiet, m.index(0.64, 0.0), m.index(0.76, 0.18))
        assert np.array_equal(rule.decide(obs).desired, m.desired(want, obs))
        if minute == 120:
            assert age[0] < 60 and age[1] > 1000 and quiet.all()
            assert rule.decide(obs).desired[0] < m.desired(np.array([m.index(0.76, 0.18)] * 3), obs)[0]
        if minute == 140:  # group 2 re-rose: no window for it any more
            assert age[2] < 60 and not quiet[2] and want[2] == m.index(0.76, 0.18)
        if minute == 199:
            assert age[0] >= 60


def test_the_generators_parts_rebuild_its_load_and_a_noise_blind_program_stays_below_the_oracle():
    """benchmarks/noise_bound.py: the parts `synthetic_parts` keeps apart rebuild `synthetic_load` bit for bit; the
    oracle's program given a reward by hand is the oracle when that reward is its own, and given the reward averaged
    over the noise it earns less than the oracle on the drawn load, but more than the rules (it knows the spikes)."""
    import importlib.util

    from fleetpilot.sim.load import synthetic_load, synthetic_parts

    parts = synthetic_parts(np.random.default_rng(7), 3000)
    assert np.array_equal(parts.load(), synthetic_load(np.random.default_rng(7), 3000))
    assert not np.array_equal(parts.load(1.0), parts.load())  # the noise is a part of its own
    p = FleetParams()
    loads = parts.load()[None, 1:600]
    same = oracle_fleet(loads, p, reward=lambda s: expected_reward(s[None, None, :], loads.T[:, :, None], p))
    assert np.array_equal(same, oracle_fleet(loads, p))
    with pytest.raises(ValueError, match="shape"):
        oracle_fleet(loads, p, reward=lambda s: np.zeros((3, 1, s.size)))

    spec = importlib.util.spec_from_file_location(
        "noise_bound", Path(__file__).parents[1] / "benchmarks/noise_bound.py"
    )
    nb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nb)
    row = nb.bound_of_seed(2000, 1500, 5, p)
    assert 0.9 * row["oracle_usd"] < row["noise_blind_usd"] < row["oracle_usd"]
    rows = backtest(
        [synthetic_run(2000, 1500)], {"target-tracking": make_policy("target-tracking"), ORACLE: None}
    ).summary
    tt_usd = next(r["expected_profit_usd"] for r in rows if r["policy"] == "target-tracking")
    assert (
        abs(next(r["expected_profit_usd"] for r in rows if r["policy"] == ORACLE) - row["oracle_usd"]) < 0.01
    )  # cents
    assert row["noise_blind_usd"] > tt_usd
