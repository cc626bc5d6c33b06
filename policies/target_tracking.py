"""`target-tracking`: AWS target-tracking semantics on utilization (load / mean capacity of the fleet).

Scale out at once to the size that brings utilization to the target, counting warming machines as capacity.
Scale in only when the fleet is well above that size (by `scale_in_tolerance`), no machine is warming, and the
last scale-in is at least `scale_in_cooldown_minutes` old. Defaults tuned on synthetic seeds 0..9 by
`fleetpilot tune --policy target-tracking --synthetic --seeds 0..9 --minutes 10000` (see README).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleetpilot.policies.base import MIN_UTILIZATION, Policy, PolicyOutput
from fleetpilot.policies.observation import Observation
from fleetpilot.policies.rules import ScaleInGate, machines_for


class TargetTrackingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_utilization: float = Field(0.62, ge=MIN_UTILIZATION, le=1, description="load / mean capacity to hold")
    scale_in_tolerance: float = Field(0.05, ge=0, lt=1, description="scale in only below (1 - this) x current size")
    scale_in_cooldown_minutes: int = Field(0, ge=0, description="minutes between two scale-ins")


class TargetTrackingPolicy(Policy):
    name = "target-tracking"

    def __init__(self, params: TargetTrackingParams | None = None):
        self.params = params or TargetTrackingParams()
        self.gate = ScaleInGate(self.params.scale_in_cooldown_minutes)

    def reset(self, n: int) -> None:
        self.gate.reset(n)

    def decide_with_floor(self, obs: Observation, floor: np.ndarray | None) -> PolicyOutput:
        p = self.params
        want = machines_for(obs.load_tpm, obs.capacity_tpm_per_machine, p.target_utilization)
        if floor is not None:
            want = np.maximum(want, floor)
        total = obs.total
        scale_in = (want < np.floor(total * (1.0 - p.scale_in_tolerance))) & (obs.warming == 0) & self.gate.allowed(obs)
        desired = np.where(want > total, want, np.where(scale_in, want, total))
        self.gate.record(obs, scale_in)
        return PolicyOutput(desired.astype(np.int64), desired.astype(np.int64))

    def decide(self, obs: Observation) -> PolicyOutput:
        return self.decide_with_floor(obs, None)
