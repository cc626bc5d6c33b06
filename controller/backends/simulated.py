"""`simulated`: a group simulated by the fleet model (sim.fleet.FleetCore), in the daemon.

The group remembers its desired capacity. Every simulated minute (`advance_to`) it moves toward it as the
backtest does: delta = clip(desired - (active + warming), -max_in, +max_out), then `FleetCore.step(delta,
load)`: removals at once, orders join after the warm-up, capacity noise from the noise key
`numpy.random.default_rng(seed).integers(0, 2**63, dtype=numpy.uint64)` and the minute (common random
numbers: the same seed gives the same capacity draws as the backtest).
"""

from __future__ import annotations

import numpy as np

from fleetpilot.controller.backends.base import Backend, BackendError, GroupState
from fleetpilot.sim.fleet import FleetCore, StepOutcome
from fleetpilot.sim.params import FleetParams


def noise_key(seed: int) -> np.uint64:
    """The capacity-noise key of a simulated group with `seed` (documented in docs/configuration.md)."""
    return np.random.default_rng(seed).integers(0, 2**63, dtype=np.uint64)


class SimulatedBackend(Backend):
    def __init__(self, params: FleetParams, seed: int = 0):
        self.params = params
        self.core = FleetCore(1, params)
        self.core.reset(slice(None), noise_key(seed))
        self.desired = int(params.initial_machines)
        self.minute: int | None = None  #: epoch minute the fleet state stands at (None until the first tick)
        self.last: StepOutcome | None = None

    # --- Backend protocol ---
    def read(self) -> GroupState:
        return GroupState(
            desired=self.desired,
            min_size=0,
            max_size=self.params.max_machines,
            active=int(self.core.active[0]),
            warming=int(self.core.warming[0]),
        )

    def set_desired(self, capacity: int) -> None:
        if not 0 <= capacity <= self.params.max_machines:
            raise BackendError(f"desired capacity {capacity} is outside the group's 0..{self.params.max_machines}")
        self.desired = int(capacity)

    # --- the simulated world ---
    def advance_to(self, now_minute: int, load_tpm: float, max_minutes: int = 60) -> int:
        """Step every minute from where the fleet stands up to `now_minute` with `load_tpm` (NaN: not known,
        served/down are then not meaningful). Returns the number of minutes stepped (at most `max_minutes`)."""
        if self.minute is None or now_minute <= self.minute:
            self.minute = now_minute if self.minute is None else self.minute
            return 0
        steps = min(now_minute - self.minute, max_minutes)
        load = np.array([float(load_tpm)])  # NaN stays NaN: it only feeds served/down
        p = self.params
        for _ in range(steps):
            total = int(self.core.active[0] + self.core.warming[0])
            delta = int(np.clip(self.desired - total, -p.max_scale_in_per_minute, p.max_scale_out_per_minute))
            self.last = self.core.step(np.array([delta]), load)
        self.minute = now_minute
        return steps

    def close(self) -> None:
        pass
