"""`static`: a fixed fleet, whatever the load."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleetpilot.policies.base import MAX_FLEET_MACHINES, Policy, PolicyOutput
from fleetpilot.policies.observation import Observation


class StaticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    machines: int = Field(
        50, ge=0, le=MAX_FLEET_MACHINES, description="fleet size (default: the seed's 50 initial machines)"
    )


class StaticPolicy(Policy):
    name = "static"

    def __init__(self, params: StaticParams | None = None):
        self.params = params or StaticParams()

    def reset(self, n: int) -> None:
        pass

    def decide(self, obs: Observation) -> PolicyOutput:
        d = np.full(obs.n, self.params.machines, dtype=np.int64)
        return PolicyOutput(d, d.copy())
