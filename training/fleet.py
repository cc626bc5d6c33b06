"""Re-export: the fleet model lives in `fleetpilot.sim.fleet` (shared with the daemon)."""

from fleetpilot.sim.fleet import FleetCore, StepOutcome, expected_reward, standard_normal_at

__all__ = ["FleetCore", "StepOutcome", "expected_reward", "standard_normal_at"]
