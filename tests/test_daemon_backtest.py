"""The daemon decides as the backtest does: same policy, same load, same noise -> same observations, same
actions, same fleet (with guards that do not bind)."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from fleetpilot.controller.backends.simulated import noise_key
from fleetpilot.controller.config import DaemonConfig
from fleetpilot.controller.daemon import Daemon
from fleetpilot.controller.sources.simulator import SYNTHETIC_START_MINUTE, SimulatorSource
from fleetpilot.policies.base import Policy
from fleetpilot.policies.registry import make_policy
from fleetpilot.sim.params import FleetParams
from fleetpilot.training.backtest import simulate

TICKS = 400
SEEDS = (0, 7, 11)


class Recorder(Policy):
    """Wraps a policy and keeps every observation it was given."""

    def __init__(self, inner):
        self.inner, self.name, self.features = inner, inner.name, []

    def reset(self, n):
        self.inner.reset(n)

    def decide(self, obs):
        self.features.append(obs.features.copy())
        return self.inner.decide(obs)


def non_binding_group(seed: int) -> dict:
    return {
        "name": f"g{seed}",
        "policy": "target-tracking",
        "min_machines": 0,
        "max_machines": 833,
        "max_scale_out_per_tick": 10,
        "max_scale_in_per_tick": 10,
        "scale_in_stabilization_minutes": 0,
        "block_scale_in_while_warming": False,
        "source": {"kind": "simulator", "seed": seed, "minutes": TICKS + 10},
        "backend": {"kind": "simulated", "seed": seed, "initial_machines": 50},
    }


def test_daemon_equals_backtest(tmp_path):
    cfg = DaemonConfig(
        interval_seconds=0.01, journal_path=tmp_path / "j.sqlite", groups=[non_binding_group(s) for s in SEEDS]
    )
    recorder = Recorder(make_policy("target-tracking"))
    daemon = Daemon(cfg, CollectorRegistry(), policies={"target-tracking": recorder})
    assert len(daemon.batches) == 1  # groups sharing a policy are decided in one batched call
    assert daemon.batches[0].policy is recorder
    daemon.backfill()
    active_seen = np.zeros((len(SEEDS), TICKS), dtype=np.int64)
    for k in range(TICKS):
        assert daemon.run_tick() == "ok"
        active_seen[:, k] = [g.backend.read().active for g in daemon.groups]  # as read this tick
    daemon.close()

    loads = np.stack([SimulatorSource(s, minutes=TICKS + 10).load_tpm[: TICKS + 1].astype(np.float64) for s in SEEDS])
    keys = np.array([noise_key(s) for s in SEEDS], dtype=np.uint64)
    ref = Recorder(make_policy("target-tracking"))
    traj = simulate(ref, loads[:, :TICKS], np.full(len(SEEDS), SYNTHETIC_START_MINUTE), keys, FleetParams())

    # same observations at every decision
    assert len(recorder.features) == TICKS and len(ref.features) == TICKS - 1
    np.testing.assert_array_equal(np.stack(recorder.features[: TICKS - 1]), np.stack(ref.features))
    # same actions: the journal's policy_desired per tick equals the backtest's desired
    import sqlite3

    db = sqlite3.connect(tmp_path / "j.sqlite")
    for i, s in enumerate(SEEDS):
        rows = db.execute(
            "SELECT tick, policy_desired, final, load_tpm, active, outcome FROM decisions "
            "WHERE group_name = ? ORDER BY tick",
            (f"g{s}",),
        ).fetchall()
        assert [r[0] for r in rows] == list(range(TICKS))
        np.testing.assert_array_equal([r[1] for r in rows][: TICKS - 1], traj.desired[i])
        np.testing.assert_array_equal([r[3] for r in rows], loads[i, :TICKS])
        assert {r[5] for r in rows} <= {"written", "unchanged"}
    # same fleet: the daemon's world after k steps is the backtest's
    np.testing.assert_array_equal(active_seen[:, 1:], traj.active)
    assert traj.desired.std() > 0 and len(set(traj.active.ravel())) > 5  # the run actually scaled
