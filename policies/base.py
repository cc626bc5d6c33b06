"""The policy interface: a policy maps a batch of observations to desired capacities.

Every policy, learned or rule, is used the same way by the backtest, the training evaluation and the daemon:
`reset(n)` once for a batch of n groups, then `decide(obs)` once per minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from fleetpilot.policies.observation import Observation


@dataclass
class PolicyOutput:
    """desired: (N,) int64 total machines wanted (active + warming), before guards.
    raw: (N,) int64 the policy's raw action (a discrete index for learned policies, `desired` for rules)."""

    desired: np.ndarray
    raw: np.ndarray


@runtime_checkable
class Policy(Protocol):
    """Implementations subclass this to inherit the defaults of the optional parts (`providers`)."""

    name: str
    #: onnxruntime execution providers of a learned policy, as chosen at load; None for rules.
    providers: list[str] | None = None

    def reset(self, n: int) -> None:
        """Forget all per-group state; the next `decide` gets a batch of `n` groups."""

    def decide(self, obs: Observation) -> PolicyOutput:
        """The desired capacity of each group for the coming minute."""
