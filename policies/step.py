"""`step`: AWS step scaling on utilization (load / mean capacity of active + warming machines).

Each minute the utilization is compared with the steps; the first matching step changes the fleet by its
percentage (at least one machine). Scale-ins wait for `scale_in_cooldown_minutes` and for warming machines.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetpilot.policies.base import Policy, PolicyOutput, saturated_machines
from fleetpilot.policies.observation import Observation
from fleetpilot.policies.rules import ScaleInGate


class StepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale_out_steps: list[tuple[float, float]] = Field(
        [(0.85, 50.0), (0.70, 25.0), (0.62, 10.0)],
        description="(utilization above, percent to add), checked from the first",
    )
    scale_in_steps: list[tuple[float, float]] = Field(
        [(0.30, 30.0), (0.45, 10.0)], description="(utilization below, percent to remove), checked from the first"
    )
    scale_in_cooldown_minutes: int = Field(5, ge=0)

    @field_validator("scale_out_steps", "scale_in_steps")
    @classmethod
    def _finite_steps(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for above, pct in v:
            if not (0 <= above <= 100 and 0 <= pct <= 1000):
                raise ValueError(f"step ({above:g}, {pct:g}): utilization must be in 0..100 and percent in 0..1000")
        return v


class StepPolicy(Policy):
    name = "step"

    def __init__(self, params: StepParams | None = None):
        self.params = params or StepParams()
        self.gate = ScaleInGate(self.params.scale_in_cooldown_minutes)

    def reset(self, n: int) -> None:
        self.gate.reset(n)

    def decide(self, obs: Observation) -> PolicyOutput:
        total = np.maximum(obs.total, 0)
        util = obs.load_tpm / (obs.capacity_tpm_per_machine * np.maximum(total, 1))
        change = np.zeros(obs.n, dtype=np.float64)
        done = np.zeros(obs.n, dtype=bool)
        for above, pct in self.params.scale_out_steps:
            hit = ~done & (util > above)
            change = np.where(hit, np.maximum(np.ceil(np.maximum(total, 1) * pct / 100.0), 1), change)
            done |= hit
        can_in = ~done & (obs.warming == 0) & self.gate.allowed(obs)
        for below, pct in self.params.scale_in_steps:
            hit = can_in & ~done & (util < below)
            change = np.where(hit, -np.maximum(np.floor(total * pct / 100.0), 1), change)
            done |= hit
        desired = saturated_machines(total + change)
        self.gate.record(obs, desired < total)
        return PolicyOutput(desired, desired.copy())
