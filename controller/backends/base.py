"""The scaling-backend interface: read a group, set its desired capacity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class BackendError(RuntimeError):
    """The group could not be read or written (after the backend's own retries)."""


@dataclass(frozen=True)
class GroupState:
    """A group as the backend sees it: desired capacity, its own min and max, machines by state."""

    desired: int
    min_size: int
    max_size: int
    active: int  #: in service
    warming: int  #: launched, not yet in service (EC2: the Pending* lifecycle states)


@runtime_checkable
class Backend(Protocol):
    """Implementations subclass this to inherit the defaults of the optional methods (`advance_to`,
    `interrupt`, `close`): a real group needs none of them."""

    def read(self) -> GroupState:
        """The group now. Raises BackendError."""
        ...

    def set_desired(self, capacity: int) -> None:
        """Set the desired capacity (absolute, idempotent), within the group's own min and max.
        Raises BackendError."""
        ...

    def advance_to(self, now_minute: int, load_tpm: float, max_minutes: int = 60) -> int:
        """A simulated world steps every minute up to `now_minute` with the minute's load (NaN: not known), at most
        `max_minutes`; returns the minutes stepped. A real group moves by itself: 0."""
        return 0

    def batch_key(self) -> tuple[str, ...] | None:
        """Backends with the same key can be read in one batched call per tick (`controller.aws_batch.prefetch`
        fills their per-tick cache, `read` and `set_desired` use it); None (the default): read one by one."""
        return None

    def interrupt(self) -> None:
        """Shutdown was asked for: stop retrying, so a call in a backoff returns at once."""

    def close(self) -> None:
        """Release connections."""
