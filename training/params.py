"""Re-export: the simulator's parameters live in `fleetpilot.sim.params` (shared with the daemon)."""

from fleetpilot.sim.params import FleetParams, SyntheticLoadParams

__all__ = ["FleetParams", "SyntheticLoadParams"]
