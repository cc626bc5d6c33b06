"""Shared arithmetic of the rule baselines (one place, used by every rule)."""

from __future__ import annotations

import numpy as np

from fleetpilot.policies.base import saturated_machines
from fleetpilot.policies.observation import Observation


def machines_for(load_tpm: np.ndarray, cap: np.ndarray, utilization: float) -> np.ndarray:
    """Machines needed to serve `load_tpm` at `utilization` of their mean capacity (at least 1, saturating at
    `MACHINES_CEILING` instead of overflowing)."""
    with np.errstate(over="ignore"):
        return saturated_machines(load_tpm / (cap * utilization))


class ScaleInGate:
    """Per-group memory of the last scale-in, for cooldowns (minutes)."""

    def __init__(self, cooldown_minutes: int):
        self.cooldown = int(cooldown_minutes)
        self.last = np.zeros(0, dtype=np.int64)

    def reset(self, n: int) -> None:
        self.last = np.full(n, np.iinfo(np.int64).min // 2, dtype=np.int64)

    def allowed(self, obs: Observation) -> np.ndarray:
        return (obs.minute - self.last) >= self.cooldown

    def record(self, obs: Observation, scaled_in: np.ndarray) -> None:
        self.last = np.where(scaled_in, obs.minute, self.last)
