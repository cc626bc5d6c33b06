"""Shadow mode: shadow policies decide on the live observations against their own fleets, never write, never
change a live decision, and their economics are computed as the live fleet's are."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from fleetpilot.controller import guards
from fleetpilot.controller.config import ConfigError, DaemonConfig, load_config
from fleetpilot.controller.daemon import Daemon
from fleetpilot.controller.journal import read_decisions
from fleetpilot.controller.shadow import LIVE, Fleet, GuardArrays, Stabilizer, guard
from fleetpilot.policies.base import PolicyOutput
from fleetpilot.sim.fleet import FleetCore, expected_minute, expected_reward
from fleetpilot.sim.params import FleetParams


def group(name="web", policy="target-tracking", shadows=(), seed=3, **over):
    g = {
        "name": name,
        "policy": policy,
        "shadow_policies": list(shadows),
        "source": {"kind": "simulator", "seed": seed},
        "backend": {"kind": "simulated", "seed": seed},
    }
    g.update(over)
    return g


def daemon(tmp_path, groups, name="j") -> Daemon:
    cfg = DaemonConfig(interval_seconds=0.05, journal_path=tmp_path / f"{name}.sqlite", groups=groups)
    d = Daemon(cfg, CollectorRegistry())
    d.backfill()
    return d


def finals(tmp_path, name: str, group_name: str = "web") -> list[tuple[int, int | None, str]]:
    rows = read_decisions(tmp_path / f"{name}.sqlite", group_name, last=10_000)
    return [(r["minute"], r["final"], r["outcome"]) for r in rows]


def test_a_shadow_of_the_live_policy_follows_the_live_fleet_exactly(tmp_path):
    """Same policy, same guards, same world rates: the shadow's own fleet is the live fleet, decision by
    decision, so its economics equal the live fleet's (the two are computed the same way)."""
    d = daemon(tmp_path, [group(shadows=["target-tracking"], warmup_minutes=3)])
    for _ in range(400):
        d.run_tick()
        t = d.status.decisions_of(0, 1)[-1]
        assert t[-1] == (t[12],), f"minute {t[0]}: shadow {t[-1]} != live {t[12]}"
    live, shadow = d.shadows.group_summary(0)
    assert live["policy"] == LIVE and shadow["policy"] == "target-tracking"
    assert shadow["minutes"] == live["minutes"] >= 399
    assert shadow["expected_profit_usd"] == pytest.approx(live["expected_profit_usd"], rel=1e-9)
    assert shadow["downtime_minutes"] == pytest.approx(live["downtime_minutes"], abs=1e-9)
    d.close()


def test_shadows_never_change_live_decisions_and_their_errors_are_counted(tmp_path, monkeypatch):
    from fleetpilot.controller import assembly

    real = assembly.load_policy

    class Broken:
        name, providers = "broken", None

        def __init__(self, how):
            self.how, self.calls = how, 0

        def reset(self, n):
            self.n = n

        def decide(self, obs):
            self.calls += 1
            if self.how == "raise" or self.calls % 3 == 0:
                raise RuntimeError("shadow boom")
            bad = np.full(self.n, np.nan if self.how == "nan" else 10**12)
            return PolicyOutput(bad, bad)

    def loader(spec, params):
        if spec == "step":
            return Broken("raise"), None
        if spec == "static":
            return Broken("nan"), None
        return real(spec, params)

    monkeypatch.setattr(assembly, "load_policy", loader)
    plain = daemon(tmp_path, [group()], "plain")
    shadowed = daemon(tmp_path, [group(shadows=["step", "static", "predictive", "target-tracking"])], "shadowed")
    for _ in range(120):
        assert plain.run_tick() == shadowed.run_tick() == "ok"
    plain.close()
    shadowed.close()
    assert finals(tmp_path, "plain") == finals(tmp_path, "shadowed")
    reg = shadowed.registry
    assert reg.get_sample_value("fleetpilot_shadow_errors_total", {"group": "web", "policy": "step"}) == 120
    assert reg.get_sample_value("fleetpilot_shadow_errors_total", {"group": "web", "policy": "static"}) == 120
    assert reg.get_sample_value("fleetpilot_shadow_errors_total", {"group": "web", "policy": "predictive"}) == 0
    assert reg.get_sample_value("fleetpilot_shadow_minutes_total", {"group": "web", "policy": "predictive"}) >= 119
    # a failing shadow holds what it had: its fleet stays where the live fleet was when it started
    s = {x["policy"]: x for x in shadowed.shadows.group_summary(0)}
    assert s["step"]["desired"] == s["static"]["desired"] == 50


def test_shadow_metrics_and_the_page_show_each_shadow_next_to_live(tmp_path):
    d = daemon(tmp_path, [group(shadows=["step", "predictive"]), group("api", seed=4)])
    for _ in range(90):
        d.run_tick()
    reg = d.registry
    for p in (LIVE, "step", "predictive"):
        labels = {"group": "web", "policy": p}
        assert reg.get_sample_value("fleetpilot_shadow_desired_machines", labels) > 0
        rev = reg.get_sample_value("fleetpilot_shadow_expected_revenue_usd_total", labels)
        cost = reg.get_sample_value("fleetpilot_shadow_expected_cost_usd_total", labels)
        assert rev > 0 and cost > 0
        window = reg.get_sample_value("fleetpilot_shadow_window_expected_profit_usd", labels)
        assert window == pytest.approx(rev - cost, rel=1e-6)  # under a day: the window is everything
        assert reg.get_sample_value("fleetpilot_shadow_downtime_minutes_total", labels) >= 0
    # a group without shadows exports none
    assert reg.get_sample_value("fleetpilot_shadow_desired_machines", {"group": "api", "policy": LIVE}) is None
    import json

    from fleetpilot.controller.status_page import api_groups, page

    g = json.loads(api_groups(d.status, "group=web")[2])["groups"][0]
    assert [s["policy"] for s in g["shadows"]] == [LIVE, "step", "predictive"]
    assert set(g["series"]["shadows"]) == {"step", "predictive"}
    assert len(g["decisions"][0]["shadows"]) == 2
    assert "<th>shadow step</th>" in page(d.status, "group=web")[2].decode()  # a column of its decisions
    assert "shadow policies" in page(d.status, "")[2].decode()  # the table of economics, also on the overview
    d.close()


def test_expected_minute_is_the_parts_of_expected_reward():
    p = FleetParams()
    n = np.array([0, 1, 5, 20, 40])
    load = np.array([0.0, 500.0, 1490.0, 6000.0, 3000.0])
    revenue, p_down = expected_minute(n, load, p)
    want = expected_reward(n, load, p)
    got = revenue - n * p.machine_cost_usd_per_minute - p_down * p.downtime_cost_usd_per_minute
    np.testing.assert_array_equal(got, want)
    assert ((p_down >= 0) & (p_down <= 1)).all()


def test_fleet_moves_as_the_simulator_core():
    p = FleetParams(warmup_minutes=4, max_scale_out_per_minute=3, max_scale_in_per_minute=2, initial_machines=10)
    core = FleetCore(1, p)
    core.reset(slice(None), 0)
    f = Fleet(1, 4, np.array([3]), np.array([2]))
    f.start(np.array([True]), np.array([10]), np.array([0]))
    rng = np.random.default_rng(0)
    desired = 10
    for _ in range(200):
        if rng.random() < 0.2:
            desired = int(rng.integers(0, 30))
        total = int(core.active[0] + core.warming[0])
        core.step(np.array([np.clip(desired - total, -2, 3)]), np.array([100.0]))
        f.step(np.array([desired]))
        assert (f.active[0], f.warming[0]) == (core.active[0], core.warming[0])


@settings(max_examples=300, deadline=None)
@given(
    answer=st.integers(0, 400),
    active=st.integers(0, 200),
    warming=st.integers(0, 40),
    lo=st.integers(0, 50),
    span=st.integers(0, 200),
    out=st.integers(0, 30),
    in_=st.integers(0, 30),
    block=st.booleans(),
    window=st.integers(0, 6),
    recs=st.lists(st.integers(0, 250), max_size=6),
    own=st.tuples(st.integers(0, 20), st.integers(150, 2**31 - 1)),
)
def test_vectorized_guards_equal_the_guard_chain(answer, active, warming, lo, span, out, in_, block, window, recs, own):
    """For good data and a usable answer, the shadows' guards give the final capacity `guards.decide` gives."""
    now = 100
    limits = guards.Limits(lo, lo + span, out, in_, window, block)
    history = tuple((now - len(recs) + k, r) for k, r in enumerate(recs))
    group_now = guards.GroupNow(active, warming, desired=active + warming, min_size=own[0], max_size=own[1])
    want, _ = guards.decide(
        guards.Memory(recommendations=history), group_now, guards.Proposal(answer, None), limits, now
    )
    ga = GuardArrays(
        np.array([lo]), np.array([lo + span]), np.array([out]), np.array([in_]), np.array([block]), np.array([window])
    )
    stab = Stabilizer(1, ga.window)
    for m, r in history:
        stab.record(m, np.array([r]), np.array([True]))
    got = guard(
        np.array([answer]),
        np.array([active]),
        np.array([warming]),
        ga,
        stab,
        now,
        np.array([own[0]]),
        np.array([own[1]]),
        np.array([True]),
    )
    assert int(got[0]) == want.final


def test_shadow_policies_config_is_checked(tmp_path):
    def write(shadows) -> str:
        import yaml

        p = tmp_path / "c.yaml"
        p.write_text(yaml.safe_dump({"groups": [group(shadows=shadows)]}))
        return str(p)

    assert load_config(write(["target-tracking", "default"])).groups[0].shadow_policies == [
        "target-tracking",
        "default",
    ]
    with pytest.raises(ConfigError, match=r"groups\[0\]\.shadow_policies: \[1\]: unknown policy 'nope'"):
        load_config(write(["step", "nope"]))
    with pytest.raises(ConfigError, match=r"groups\[0\]\.shadow_policies: \[1\]: 'step' is listed twice"):
        load_config(write(["step", "step"]))
