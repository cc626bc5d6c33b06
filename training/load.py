"""Re-export: loads and traces live in `fleetpilot.sim.load` (shared with the daemon)."""

from fleetpilot.sim.load import (
    SYNTHETIC_START,
    Augment,
    Load,
    TraceError,
    read_trace,
    sample_window,
    synthetic_load,
    write_trace,
)

__all__ = [
    "SYNTHETIC_START",
    "Augment",
    "Load",
    "TraceError",
    "read_trace",
    "sample_window",
    "synthetic_load",
    "write_trace",
]
