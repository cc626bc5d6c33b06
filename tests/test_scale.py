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
