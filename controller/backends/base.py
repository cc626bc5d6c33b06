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
    def read(self) -> GroupState:
        """The group now. Raises BackendError."""

    def set_desired(self, capacity: int) -> None:
        """Set the desired capacity (absolute, idempotent), within the group's own min and max.
        Raises BackendError."""
