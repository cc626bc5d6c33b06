"""The metric-source interface: timestamped load samples, never a silent zero."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class SourceError(RuntimeError):
    """The source could not be read (connection, timeout, HTTP or API error, unparseable answer)."""


@dataclass(frozen=True)
class Sample:
    """The load of one whole minute. `minute` is minutes since the Unix epoch of the minute's start (UTC).
    `load_tpm` may be NaN when the source said NaN; callers treat NaN, empty (None) and stale explicitly."""

    minute: int
    load_tpm: float


@runtime_checkable
class MetricSource(Protocol):
    """Implementations subclass this to inherit the default of the optional `close`."""

    def latest(self, now_minute: int) -> Sample | None:
        """The most recent complete minute at or before `now_minute - 1`; None when the source has no data.
        Raises SourceError when the source cannot be read."""
        ...

    def history(self, start_minute: int, end_minute: int) -> list[Sample]:
        """Per-minute samples in [start_minute, end_minute), oldest first, for backfill (may have holes).
        Raises SourceError when the source cannot be read."""
        ...

    def batch_key(self) -> tuple[str, ...] | None:
        """Sources with the same key can be read in one batched call per tick (`controller.aws_batch.prefetch`
        fills their per-tick cache, `latest` answers from it); None (the default): read one by one."""
        return None

    def close(self) -> None:
        """Release connections."""
