"""Property: the whole decision path (source reading -> observation -> policy -> guards -> write), fed arbitrary
floats as load readings (+-inf, NaN, 0, -0, 1e-300, 1e300, just above int64's reach, negative, ordinary loads),
always ends in an integer desired capacity within [min_machines, max_machines], the tick never fails, and a
reading flagged bad (nan, invalid, implausible) never lowers the group's desired capacity. Run with a rule and
with the shipped `default` ONNX model. `PROPERTY_EXAMPLES=1000` hunts longer.
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from fleetpilot.controller.backends.simulated import SimulatedBackend
from fleetpilot.controller.config import DaemonConfig
from fleetpilot.controller.daemon import Daemon
from fleetpilot.controller.sources.base import MetricSource, Sample
from fleetpilot.policies.registry import shipped_models
from fleetpilot.sim.params import FleetParams
from tests.test_daemon_tick import FakeClock

MIN, MAX = 2, 60
SETTINGS = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SPECIAL = [math.inf, -math.inf, math.nan, 0.0, -0.0, 1e-300, 1e300, 1.7976931348623157e308, 2.5e21, 1e22, -1.0]
READINGS = st.one_of(
    st.sampled_from(SPECIAL),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=50_000),  # ordinary loads between, so the fleet moves both ways
)


class DrawnSource(MetricSource):
    """The load source of the property: each tick's reading is the next drawn float (for the minute just ended)."""

    def __init__(self):
        self.value = 0.0

    def latest(self, now_minute: int) -> Sample:
        return Sample(now_minute - 1, self.value)

    def history(self, start: int, end: int) -> list[Sample]:
        return []

    def close(self) -> None:
        pass


_daemons: dict[str, tuple[Daemon, DrawnSource]] = {}


def daemon_for(policy: str, tmp_path_factory) -> tuple[Daemon, DrawnSource]:
    if policy not in _daemons:
        cfg = DaemonConfig(
            interval_seconds=60,
            journal_path=tmp_path_factory.mktemp(policy) / "j.sqlite",
            groups=[
                {
                    "name": "web",
                    "policy": policy,
                    "min_machines": MIN,
                    "max_machines": MAX,
                    "bad_data_ticks_before_fallback": 2,
                    "source": {"kind": "prometheus", "url": "http://127.0.0.1:1", "query": "q"},
                    "backend": {"kind": "simulated"},
                }
            ],
        )
        src = DrawnSource()
        backend = SimulatedBackend(FleetParams(initial_machines=30, max_machines=MAX), seed=0)
        d = Daemon(cfg, CollectorRegistry(), sources=[src], backends=[backend], clock=FakeClock())
        d.backfill()
        _daemons[policy] = (d, src)
    return _daemons[policy]


def check(policy: str, readings: list[float], tmp_path_factory) -> None:
    d, src = daemon_for(policy, tmp_path_factory)
    for value in readings:
        src.value = value
        assert d.run_tick() != "error", value
        status, before, final, outcome = d.journal.db.execute(
            "SELECT data_status, desired_before, final, outcome FROM decisions ORDER BY id DESC LIMIT 1"
        ).fetchone()
        assert isinstance(final, int) and MIN <= final <= MAX, (value, status, final)
        # bad: not a load at all, or one beyond any plausible fleet (1,000 x max_machines at 300 tpm each)
        bad = not (math.isfinite(value) and 0 <= value <= 1000 * MAX * 300.0)
        if bad or status != "ok":
            assert final >= before, (value, status, before, final)  # never a scale-in on bad data
        if bad:
            assert status in ("nan", "invalid", "implausible"), (value, status)  # and it is flagged
        assert outcome in ("written", "unchanged", "held"), (value, outcome)


@SETTINGS
@given(readings=st.lists(READINGS, min_size=1, max_size=30))
def test_any_reading_gives_a_bounded_integer_and_never_scales_in_on_bad_data_rule(readings, tmp_path_factory):
    check("target-tracking", readings, tmp_path_factory)


@pytest.mark.skipif("default" not in shipped_models(), reason="the shipped default model is not installed")
@SETTINGS
@given(readings=st.lists(READINGS, min_size=1, max_size=30))
def test_any_reading_gives_a_bounded_integer_and_never_scales_in_on_bad_data_default(readings, tmp_path_factory):
    check("default", readings, tmp_path_factory)
