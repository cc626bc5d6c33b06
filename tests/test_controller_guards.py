"""Each guard alone, then the decision chain (controller.guards)."""

from __future__ import annotations

import pytest

from fleetpilot.controller import guards as g
from fleetpilot.controller.guards import Decision, GroupNow, Limits, Memory, Proposal, decide


def limits(**kw) -> Limits:
    base = dict(
        min_machines=2,
        max_machines=100,
        max_scale_out_per_tick=10,
        max_scale_in_per_tick=5,
        scale_in_stabilization_minutes=0,
        block_scale_in_while_warming=False,
        bad_data_ticks_before_fallback=3,
        paused=False,
    )
    base.update(kw)
    return Limits(**base)


# --- single guards -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, expected",
    [(50, (50, None)), (1, (2, "min-machines")), (101, (100, "max-machines")), (2, (2, None)), (100, (100, None))],
)
def test_clamp_bounds(value, expected):
    assert g.clamp_bounds(value, 2, 100) == expected


def test_clamp_bounds_min_wins_when_bounds_cross():
    assert g.clamp_bounds(7, 10, 5) == (10, "min-machines")


def test_stabilization_keeps_the_highest_recent_recommendation():
    window = ((100, 30), (101, 25), (102, 20))
    # scale-in from 28 to 18: the highest of the last 5 minutes is 30, but never above the current 28
    assert g.stabilize_scale_in(18, 28, window, now_minute=103, window_minutes=5) == (28, "stabilization")
    # a 3-minute window keeps minutes 101 and 102 (highest 25); a 2-minute one only 102 (20)
    assert g.stabilize_scale_in(18, 28, window, now_minute=103, window_minutes=3) == (25, "stabilization")
    assert g.stabilize_scale_in(18, 28, window, now_minute=103, window_minutes=2) == (20, "stabilization")


def test_stabilization_never_touches_scale_out_or_a_zero_window():
    window = ((100, 90),)
    assert g.stabilize_scale_in(40, 30, window, 101, 5) == (40, None)
    assert g.stabilize_scale_in(10, 30, window, 101, 0) == (10, None)
    assert g.stabilize_scale_in(10, 30, (), 101, 5) == (10, None)  # nothing remembered: the value itself


def test_no_scale_in_while_warming():
    assert g.block_scale_in_while_warming(10, 20, warming=3, enabled=True) == (20, "warming")
    assert g.block_scale_in_while_warming(10, 20, warming=0, enabled=True) == (10, None)
    assert g.block_scale_in_while_warming(10, 20, warming=3, enabled=False) == (10, None)
    assert g.block_scale_in_while_warming(30, 20, warming=3, enabled=True) == (30, None)


def test_bad_data_never_scales_in():
    assert g.hold_on_bad_data(10, 20, data_ok=False) == (20, "bad-data-no-scale-in")
    assert g.hold_on_bad_data(25, 20, data_ok=False) == (25, None)
    assert g.hold_on_bad_data(10, 20, data_ok=True) == (10, None)


@pytest.mark.parametrize(
    "value, expected",
    [(35, (30, "scale-out-limit")), (30, (30, None)), (14, (15, "scale-in-limit")), (15, (15, None)), (20, (20, None))],
)
def test_step_limits(value, expected):
    assert g.limit_step(value, 20, max_out=10, max_in=5) == expected


def test_step_limit_never_below_zero():
    assert g.limit_step(0, 3, max_out=10, max_in=5) == (0, None)


def test_needs_fallback_after_the_configured_bad_ticks():
    lim = limits(bad_data_ticks_before_fallback=3)
    assert not g.needs_fallback(Memory(bad_ticks=0), "stale", lim)
    assert not g.needs_fallback(Memory(bad_ticks=1), "stale", lim)
    assert g.needs_fallback(Memory(bad_ticks=2), "stale", lim)
    assert not g.needs_fallback(Memory(bad_ticks=5), g.DATA_OK, lim)


# --- the chain ---------------------------------------------------------------------------------------------
NOW = GroupNow(active=20, warming=0, desired=20)


def test_policy_value_passes_when_no_guard_binds():
    d, mem = decide(Memory(), NOW, Proposal(24, None), limits(), 1000)
    assert (d.final, d.action, d.reasons, d.write, d.reason) == (24, "policy", (), True, "policy")
    assert g.direction(d.final, NOW) == "up" and mem.bad_ticks == 0


def test_chain_reports_every_binding_guard_in_order():
    d, _ = decide(Memory(), NOW, Proposal(500, None), limits(), 1000)
    assert d.final == 30 and d.reasons == ("max-machines", "scale-out-limit") and d.reason == "scale-out-limit"
    assert d.recommendation == 100


def test_hold_then_fallback_on_lasting_bad_data_and_never_scale_in():
    lim = limits(bad_data_ticks_before_fallback=2)
    mem = Memory()
    d, mem = decide(mem, NOW, Proposal(5, None, data_status="stale"), lim, 1000)
    assert (d.final, d.action, d.write, d.reasons) == (20, "hold", False, ("hold:stale",))
    # 2nd bad tick: the fallback rule (on the last good data) is used, but it may not scale in
    d, mem = decide(mem, NOW, Proposal(5, 12, data_status="nan"), lim, 1001)
    assert d.action == "fallback" and d.fallback_cause == "bad_data"
    assert d.final == 20 and "bad-data-no-scale-in" in d.reasons and not d.write
    d, mem = decide(mem, NOW, Proposal(5, 26, data_status="error"), lim, 1002)
    assert (d.final, d.write) == (26, True) and mem.bad_ticks == 3
    # good data again: back to the policy, counter reset
    d, mem = decide(mem, NOW, Proposal(22, None), lim, 1003)
    assert d.action == "policy" and d.final == 22 and mem.bad_ticks == 0


def test_lasting_bad_data_without_any_good_data_holds():
    d, _ = decide(Memory(bad_ticks=9), NOW, Proposal(None, None, data_status="empty"), limits(), 1000)
    assert d.action == "hold" and d.final == NOW.desired and not d.write


def test_model_error_uses_the_fallback():
    d, _ = decide(Memory(), NOW, Proposal(None, 25, model_cause="non_finite"), limits(), 1000)
    assert (d.action, d.final, d.fallback_cause, d.reasons) == ("fallback", 25, "non_finite", ("fallback:non_finite",))


def test_paused_decides_but_never_writes():
    d, _ = decide(Memory(), NOW, Proposal(28, None), limits(paused=True), 1000)
    assert d.final == 28 and not d.write and d.reasons == ("paused",) and d.reason == "paused"


def test_stabilization_window_is_remembered_across_ticks():
    lim = limits(scale_in_stabilization_minutes=3, max_scale_in_per_tick=100)
    mem = Memory()
    now = GroupNow(active=30, warming=0, desired=30)
    d, mem = decide(mem, now, Proposal(30, None), lim, 100)
    d, mem = decide(mem, now, Proposal(10, None), lim, 101)
    assert d.final == 30 and d.reasons == ("stabilization",)
    d, mem = decide(mem, now, Proposal(12, None), lim, 102)
    assert d.final == 30
    d, mem = decide(mem, now, Proposal(11, None), lim, 103)  # 100 is out of the window: max(10, 12, 11) = 12
    assert d.final == 12 and d.reasons == ("stabilization",)
    assert [m for m, _ in mem.recommendations] == [101, 102, 103]


def test_warming_blocks_scale_in_in_the_chain():
    now = GroupNow(active=20, warming=4, desired=24)
    d, _ = decide(Memory(), now, Proposal(10, None), limits(block_scale_in_while_warming=True), 1000)
    assert d.final == 24 and d.reasons == ("warming",) and not d.write


def test_group_bounds_are_never_left():
    now = GroupNow(active=20, warming=0, desired=20, min_size=5, max_size=22)
    d, _ = decide(Memory(), now, Proposal(27, None), limits(), 1000)
    assert d.final == 22 and d.reasons[-1] == "group-max"


def test_decide_is_pure():
    args = (
        Memory(bad_ticks=1, recommendations=((99, 40),)),
        GroupNow(30, 2, 31),
        Proposal(12, 15, "stale"),
        limits(scale_in_stabilization_minutes=5),
        100,
    )
    first = decide(*args)
    assert all(decide(*args) == first for _ in range(3))
    assert isinstance(first[0], Decision)
