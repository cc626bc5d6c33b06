"""`simulated`: a group simulated by the fleet model (sim.fleet.FleetCore), in the daemon.

The group remembers its desired capacity. Every simulated minute (`advance_to`) it moves toward it as the
backtest does: delta = clip(desired - (active + warming), -max_in, +max_out), then `FleetCore.step(delta,
load)`: removals at once, orders join after the warm-up, capacity noise from the noise key
`numpy.random.default_rng(seed).integers(0, 2**63, dtype=numpy.uint64)` and the minute (common random
numbers: the same seed gives the same capacity draws as the backtest).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

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
        self.row = 0  #: this group's row of `core` (a core shared with other groups: see `advance_many`)
        self.desired = int(params.initial_machines)
        self.minute: int | None = None  #: epoch minute the fleet state stands at (None until the first tick)
        self._last: tuple[StepOutcome, int] | None = None

    @property
    def last(self) -> StepOutcome | None:
        """What the last simulated minute did to this group (arrays of shape (1,))."""
        if self._last is None:
            return None
        out, row = self._last
        if out.active.shape[0] == 1:
            return out
        return StepOutcome(*(np.asarray(v)[row : row + 1] for v in vars(out).values()))

    @property
    def shared(self) -> bool:
        return self.core.n > 1

    # --- Backend protocol ---
    def read(self) -> GroupState:
        return GroupState(
            desired=self.desired,
            min_size=0,
            max_size=self.params.max_machines,
            active=int(self.core.active[self.row]),
            warming=int(self.core._warming[self.row]),
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
        if self.shared:
            self._detach()
        steps = min(now_minute - self.minute, max_minutes)
        load = np.array([float(load_tpm)])  # NaN stays NaN: it only feeds served/down
        p = self.params
        for _ in range(steps):
            total = int(self.core.active[0] + self.core.warming[0])
            delta = int(np.clip(self.desired - total, -p.max_scale_in_per_minute, p.max_scale_out_per_minute))
            self._last = (self.core.step(np.array([delta]), load), 0)
        self.minute = now_minute
        return steps

    def _detach(self) -> None:
        """Leave a shared core for a core of its own (the same state): this group now steps alone."""
        shared, r = self.core, self.row
        own = FleetCore(1, self.params)
        own.active[0], own._warming[0] = shared.active[r], shared._warming[r]
        own.queue[0] = shared.queue[r]
        own.head = shared.head
        own.minute[0], own.noise_key[0] = shared.minute[r], shared.noise_key[r]
        if self._last is not None:
            self._last = (self.last, 0)
        self.core, self.row = own, 0
        members = _MEMBERS.get(shared)
        if members is not None:
            members[r] = None


#: The members of each shared core by row (None: a row whose group left).
_MEMBERS: weakref.WeakKeyDictionary[FleetCore, list[SimulatedBackend | None]] = weakref.WeakKeyDictionary()


def _steps_vectorized(core: FleetCore, desired: np.ndarray, load: np.ndarray, steps: int) -> StepOutcome | None:
    """`SimulatedBackend.advance_to`'s minute loop for all the rows of `core` at once (elementwise the same)."""
    p = core.p
    out = None
    for _ in range(steps):
        delta = np.clip(desired - (core.active + core._warming), -p.max_scale_in_per_minute, p.max_scale_out_per_minute)
        out = core.step(delta, load)
    return out


def advance_many(
    backends: Sequence[SimulatedBackend], now_minute: int, loads: Sequence[float], max_minutes: int = 60
) -> None:
    """`b.advance_to(now_minute, load, max_minutes)` for every backend, with the same result, in one numpy step
    per minute for all the groups that stand at the same minute with the same fleet parameters: they are
    moved into one shared FleetCore (a row each) the first time, and stepped together from then on. Only
    plain SimulatedBackends (whose `advance_to` is not overridden) may be passed."""
    fresh: dict[tuple, list[tuple[SimulatedBackend, float]]] = {}
    cores: dict[int, list[tuple[SimulatedBackend, float, int]]] = {}
    for b, load in zip(backends, loads, strict=True):
        if b.minute is None or now_minute <= b.minute:
            b.advance_to(now_minute, load, max_minutes)  # nothing to step
            continue
        steps = min(now_minute - b.minute, max_minutes)
        if b.shared:
            cores.setdefault(id(b.core), []).append((b, load, steps))
        else:
            fresh.setdefault((b.params, b.minute, b.core.head, steps), []).append((b, load))
    for members in cores.values():
        core = members[0][0].core
        rows = _MEMBERS.get(core, [])
        everyone = len(members) == sum(m is not None for m in rows) and len({m[2] for m in members}) == 1
        if not everyone:  # some rows move differently this time: they step on their own
            for b, load, _ in members:
                b.advance_to(now_minute, load, max_minutes)
            continue
        _step_shared(core, [(b, load) for b, load, _ in members], members[0][2], now_minute)
    for (params, _, _, steps), joining in fresh.items():
        if len(joining) == 1:
            b, load = joining[0]
            b.advance_to(now_minute, load, max_minutes)
            continue
        core = FleetCore(len(joining), params)
        core.head = joining[0][0].core.head
        for r, (b, _) in enumerate(joining):
            own = b.core
            core.active[r], core._warming[r] = own.active[0], own._warming[0]
            core.queue[r] = own.queue[0]
            core.minute[r], core.noise_key[r] = own.minute[0], own.noise_key[0]
            b.core, b.row = core, r
        _MEMBERS[core] = [b for b, _ in joining]
        _step_shared(core, joining, steps, now_minute)


def _step_shared(core: FleetCore, members: list[tuple[SimulatedBackend, float]], steps: int, now_minute: int) -> None:
    n = core.n
    desired = np.zeros(n, dtype=np.int64)
    load = np.full(n, np.nan)
    rows = np.fromiter((b.row for b, _ in members), np.int64, len(members))
    desired[rows] = np.fromiter((b.desired for b, _ in members), np.int64, len(members))
    load[rows] = np.fromiter((float(x) for _, x in members), np.float64, len(members))
    out = _steps_vectorized(core, desired, load, steps)
    for b, _ in members:
        if out is not None:
            b._last = (out, b.row)
        b.minute = now_minute

    def close(self) -> None:
        pass
