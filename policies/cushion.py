"""`cushion`: the learned policy's action family as a fixed rule (one utilization target, one cushion).

The desired fleet is `ceil((base load + c x leaky daily maximum) / (capacity per machine x u))`, with the base
load and the scale-in semantics of `policies.actions.ActionMapping`. It is the rule a learned policy starts
from, and the way to see what a whole (u, c) grid earns: `fleetpilot tune --policy cushion` prints the grid's
best point and its profit/downtime frontier.

With `jump_window_minutes` > 0, for that many minutes after a detected load jump (feature `jump_age` of the
observation builder) the rule runs at (`jump_utilization`, `jump_cushion_day_max_share`) instead: on the
seed's load a jump is a spike's onset and no other spike can start for 105 minutes, so the spike insurance can
be dropped meanwhile. 0 turns this off. The window applies only while the load has not re-risen soon after a
jump (feature `rerise_age`) for `jump_quiet_minutes`: on a bursty load the minutes after a jump are not safe.
Defaults: the shipped model's starting rule.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleetpilot.policies.actions import ActionMapping
from fleetpilot.policies.base import MIN_UTILIZATION, Policy, PolicyOutput
from fleetpilot.policies.observation import Observation


def in_jump_window(obs: Observation, window_minutes: int, quiet_minutes: int) -> np.ndarray:
    """(N,) bool: the last load jump is under `window_minutes` old and the load has not re-risen (observation
    feature `rerise_age`) for `quiet_minutes`."""
    return (obs.jump_age_minutes < window_minutes) & (obs.rerise_age_minutes >= quiet_minutes)


class RuleActions:
    """Actions of an `ActionMapping` as a rule: row i takes `main[i]`, or `jump[i]` in a jump window
    (`in_jump_window`). `cushion` is one of these; training compares and imitates them (with window 0, the
    grid's actions as fixed rules)."""

    name = "rule"

    def __init__(
        self, mapping: ActionMapping, main: np.ndarray, jump: np.ndarray | None = None, window: int = 0, quiet: int = 0
    ):
        self.mapping, self.main, self.window = mapping, np.asarray(main, dtype=np.int64), int(window)
        self.jump = self.main if jump is None else np.asarray(jump, dtype=np.int64)
        self.quiet = int(quiet)

    def reset(self, n: int) -> None:
        pass

    def actions(self, obs: Observation) -> np.ndarray:
        """(N,) index into `self.mapping`."""
        return np.where(in_jump_window(obs, self.window, self.quiet), self.jump, self.main).astype(np.int64)

    def decide(self, obs: Observation) -> PolicyOutput:
        k = self.actions(obs)
        return PolicyOutput(self.mapping.desired(k, obs), k)


class CushionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    utilization: float = Field(0.76, ge=MIN_UTILIZATION, le=1, description="load / mean capacity to run at")
    cushion_day_max_share: float = Field(
        0.18, ge=0, le=1, description="extra load to provision for, as a share of the leaky daily maximum"
    )
    base_minutes: int = Field(3, ge=1, le=60, description="minutes averaged into the base load")
    surge_ratio: float = Field(
        1.1, ge=1, le=100, description="last minute above this x the average: the base is the last minute"
    )
    jump_window_minutes: int = Field(
        95, ge=0, le=10_000, description="minutes after a detected load jump run at the jump pair below (0: off)"
    )
    jump_utilization: float = Field(0.64, ge=MIN_UTILIZATION, le=1, description="utilization during the jump window")
    jump_cushion_day_max_share: float = Field(0.0, ge=0, le=1, description="cushion during the jump window")
    jump_quiet_minutes: int = Field(
        4320,
        ge=0,
        le=100_000,
        description="the jump window applies only if the load has not re-risen within a jump's refractory time for this many minutes",
    )


class CushionPolicy(Policy):
    name = "cushion"

    def __init__(self, params: CushionParams | None = None):
        self.params = p = params or CushionParams()
        mapping = ActionMapping(
            (p.utilization, p.jump_utilization),
            (p.cushion_day_max_share, p.jump_cushion_day_max_share),
            p.base_minutes,
            p.surge_ratio,
        )
        self.rule = RuleActions(
            mapping,
            np.array(mapping.index(p.utilization, p.cushion_day_max_share)),
            np.array(mapping.index(p.jump_utilization, p.jump_cushion_day_max_share)),
            p.jump_window_minutes,
            p.jump_quiet_minutes,
        )

    def reset(self, n: int) -> None:
        pass

    def decide(self, obs: Observation) -> PolicyOutput:
        d = self.rule.decide(obs).desired
        return PolicyOutput(d, d.copy())
