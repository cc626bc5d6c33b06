"""`cushion`: the learned policy's action family as a fixed rule (one utilization target, one cushion).

The desired fleet is `ceil((base load + c x leaky daily maximum) / (capacity per machine x u))`, with the base
load and the scale-in semantics of `policies.actions.ActionMapping`. It is the rule a learned policy starts
from, and the way to see what a whole (u, c) grid earns: `fleetpilot tune --policy cushion` prints the grid's
best point and its profit/downtime frontier. Defaults: the shipped model's starting rule.
"""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies.actions import ActionMapping
from policies.base import PolicyOutput
from policies.observation import Observation


class CushionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    utilization: float = Field(0.76, gt=0, le=1, description="load / mean capacity to run at")
    cushion_day_max_share: float = Field(0.18, ge=0, le=1, description="extra load to provision for, as a share of the leaky daily maximum")
    base_minutes: int = Field(3, ge=1, le=60, description="minutes averaged into the base load")
    surge_ratio: float = Field(1.1, ge=1, description="last minute above this x the average: the base is the last minute")


class CushionPolicy:
    name = "cushion"

    def __init__(self, params: CushionParams | None = None):
        self.params = p = params or CushionParams()
        self.mapping = ActionMapping((p.utilization,), (p.cushion_day_max_share,), p.base_minutes, p.surge_ratio)

    def reset(self, n: int) -> None:
        pass

    def decide(self, obs: Observation) -> PolicyOutput:
        d = self.mapping.desired(np.zeros(obs.n, dtype=np.int64), obs)
        return PolicyOutput(d, d.copy())
