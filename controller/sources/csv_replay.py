"""`csv`: replay of a per-minute `timestamp,requests` trace (sim.load.read_trace) on the daemon's clock.

The trace's first row is replayed at `start_minute` (by default its own timestamp, so time-of-day features are
the trace's). With `loop`, the trace starts again after its last row; without it, the last sample is returned
from then on and goes stale (the daemon holds, then falls back) - never a zero.
"""

from __future__ import annotations

from pathlib import Path

from fleetpilot.controller.sources.simulator import ReplaySource
from fleetpilot.sim.load import read_trace


class CsvReplaySource(ReplaySource):
    def __init__(
        self,
        path: str | Path,
        start_minute: int | None = None,
        peak_tpm: float | None = None,
        fill_gaps: bool = False,
        loop: bool = True,
    ):
        trace = read_trace(path, fill_gaps=fill_gaps)  # raises TraceError naming file, line and reason
        if peak_tpm is not None:
            trace = trace.rescaled(peak_tpm)
        self.trace_start_minute = trace.start_minute()
        super().__init__(trace.load_tpm, self.trace_start_minute if start_minute is None else start_minute, loop)
        self.path = Path(path)
