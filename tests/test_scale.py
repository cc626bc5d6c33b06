"""The batched hot path gives what the per-group path gives: simulated groups stepped together
(`simulated.advance_many`) against each stepped alone, journal rows built as tuples against `JournalRow`, cached
metric children against `labels()`."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fleetpilot.controller.backends.simulated import SimulatedBackend, advance_many
from fleetpilot.controller.journal import JournalRow, row_values
from fleetpilot.controller.metrics import Metrics
from fleetpilot.sim.params import FleetParams


def _state(b: SimulatedBackend) -> tuple:
    last = b.last
    return (
        b.read(),
        b.minute,
        None if last is None else tuple(str(np.asarray(v).tolist()) for v in vars(last).values()),  # NaN == NaN
    )


@pytest.mark.parametrize("seed", range(6))
def test_advance_many_steps_every_group_as_advance_to_does(seed):
    rng = random.Random(seed)
    kinds = [
        FleetParams(initial_machines=10, max_machines=50),
        FleetParams(initial_machines=3, max_machines=20, warmup_minutes=2, max_scale_in_per_minute=2),
        FleetParams(initial_machines=5, warmup_minutes=0),
    ]
    n = 40
    params = [rng.choice(kinds) for _ in range(n)]
    alone = [SimulatedBackend(p, seed=i) for i, p in enumerate(params)]
    together = [SimulatedBackend(p, seed=i) for i, p in enumerate(params)]
    minute = 1000
    for tick in range(60):
        minute += rng.choice([1, 1, 1, 2, 5])  # catch-up steps now and then
        loads = [rng.choice([math.nan, rng.uniform(0, 20_000)]) for _ in range(n)]
        for a, t in zip(alone, together, strict=True):
            if rng.random() < 0.3:
                d = rng.randint(0, a.params.max_machines)
                a.set_desired(d)
                t.set_desired(d)
        # now and then one group steps on its own (it leaves the shared core), or a few stand still
        solo = rng.randrange(n) if tick % 7 == 3 else None
        moving = [i for i in range(n) if i != solo]
        if solo is not None:
            alone[solo].advance_to(minute, loads[solo], 60)
            together[solo].advance_to(minute, loads[solo], 60)
        for i in moving:
            alone[i].advance_to(minute, loads[i], 60)
        advance_many([together[i] for i in moving], minute, [loads[i] for i in moving], 60)
        for i, (a, t) in enumerate(zip(alone, together, strict=True)):
            assert _state(a) == _state(t), (tick, i)
    assert any(t.shared for t in together)  # the batched path was taken


def test_row_values_is_journal_row_values():
    rng = random.Random(0)
    for _ in range(200):
        args = [
            "2026-01-01T00:00:00+00:00",
            rng.randint(0, 10**6),
            rng.randint(0, 10**8),
            f"g{rng.randint(0, 99)}",
            rng.choice(["default", "target-tracking"]),
            rng.choice(["policy", "fallback", "hold"]),
            rng.choice(["ok", "nan", "stale"]),
            rng.choice([None, rng.uniform(0, 1e5)]),
            *(rng.choice([None, rng.randint(0, 500)]) for _ in range(8)),
            rng.sample(["min-machines", "warming", "stabilization", "paused", "hold:nan"], rng.randint(0, 3)),
            rng.choice([None, rng.randint(0, 500)]),
            rng.choice(["written", "unchanged", "error"]),
        ]
        assert row_values(*args[:16], tuple(args[16]), *args[17:]) == JournalRow(*args).values()


def test_metric_children_are_the_labelled_series():
    m = Metrics(CollectorRegistry())
    child = m.child(m.decisions, "web", "up", "policy")
    assert child is m.child(m.decisions, "web", "up", "policy")
    child.inc(3)
    assert m.decisions.labels("web", "up", "policy") is child
    assert (
        m.registry.get_sample_value(
            "fleetpilot_decisions_total", {"group": "web", "direction": "up", "reason": "policy"}
        )
        == 3
    )
