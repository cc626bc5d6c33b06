"""The policy interface: a policy maps a batch of observations to desired capacities.

Every policy, learned or rule, is used the same way by the backtest, the training evaluation and the daemon:
`reset(n)` once for a batch of n groups, then `decide(obs)` once per minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from fleetpilot.policies.observation import Observation

#: The largest fleet a config may name (min/max machines, step limits, a static rule's size): what an EC2 Auto
#: Scaling group, the simulated group and the journal's INTEGER columns all store exactly, with room to spare.
MAX_FLEET_MACHINES = 1_000_000
#: Utilization targets below this are refused (rules and model manifests): a target of 1e-300 asks for an
#: infinite fleet (5%: twenty times the load's machines, already far beyond any sane headroom).
MIN_UTILIZATION = 0.05

#: The most machines a policy ever asks for. Far above any fleet a config allows (1,000,000 machines, see
#: controller/config.py) and far below where int64 arithmetic wraps around: a computed need above it (an absurd
#: load, a tiny capacity per machine) saturates here instead of overflowing to a negative number.
MACHINES_CEILING = 2**31 - 1


def saturated_machines(need: np.ndarray, floor: int = 1) -> np.ndarray:
    """(N,) int64 machines from a float need, rounded up, within [floor, MACHINES_CEILING]. +inf saturates at
    the ceiling; NaN (no answer) becomes -1, which the daemon counts as `non_finite` and its guards hold on."""
    need = np.asarray(need, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = np.clip(
            np.ceil(np.nan_to_num(need, nan=0.0, posinf=MACHINES_CEILING, neginf=floor) - 1e-9), floor, MACHINES_CEILING
        )
    return np.where(np.isnan(need), -1, out.astype(np.int64))


def toward(target: np.ndarray, obs: Observation) -> np.ndarray:
    """(N,) int64 desired capacity (active + warming) for a target fleet. Scaling in removes active machines at
    once while ordered ones are still warming, so a scale-in only ever removes active machines above the target:
    with 12 active, 10 warming and a target of 12, nothing is removed (removing 10 would leave 2 serving for
    minutes). A target of -1 (no answer) stays -1, never a scale-in."""
    return toward_machines(target, obs.active, obs.warming)


def toward_machines(target: np.ndarray, active: np.ndarray, warming: np.ndarray) -> np.ndarray:
    """`toward` for a fleet of `active` and `warming` machines."""
    total = active + warming
    removable = np.maximum(np.minimum(total - target, active - target), 0)
    out = np.where(target >= total, target, total - removable)
    return np.where(target < 0, -1, out).astype(np.int64)


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
