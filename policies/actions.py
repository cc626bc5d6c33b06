"""How a learned policy's discrete action becomes a desired capacity (recorded in each model's manifest).

Action k picks a pair (utilization u, cushion c) from a grid; the desired fleet (active + warming) is

    ceil((last minute's load + c x leaky daily maximum of the load) / (capacity per machine x u))

so the policy chooses, each minute, how hot to run the fleet and how much absolute headroom to keep for a
sudden jump (which scales with the daily peak, not with the current load). Every action is a sane rule: the
policy's job is to pick the right one for the moment, which keeps it safe and explainable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policies.observation import Observation

KIND = "utilization-cushion-grid"


@dataclass(frozen=True)
class ActionMapping:
    utilization: tuple[float, ...] = (0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)
    cushion_day_max_share: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2)
    _u: np.ndarray = field(init=False, repr=False, compare=False)
    _c: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        u, c = np.meshgrid(np.asarray(self.utilization), np.asarray(self.cushion_day_max_share), indexing="ij")
        object.__setattr__(self, "_u", u.ravel())
        object.__setattr__(self, "_c", c.ravel())

    @property
    def n(self) -> int:
        return int(self._u.shape[0])

    def index(self, utilization: float, cushion: float) -> int:
        return int(np.argmin(np.abs(self._u - utilization) + np.abs(self._c - cushion)))

    def describe(self, k: int) -> str:
        return f"u={self._u[k]:.2f} cushion={self._c[k]:.2f}xdaymax"

    def target(self, k: np.ndarray, obs: Observation) -> np.ndarray:
        """The fleet action k asks for (machines)."""
        k = np.asarray(k, dtype=np.int64)
        day_max = obs.day_max_tpm if obs.day_max_tpm is not None else obs.load_tpm
        need = (obs.load_tpm + self._c[k] * day_max) / (obs.capacity_tpm_per_machine * self._u[k])
        return np.maximum(np.ceil(need - 1e-9), 1).astype(np.int64)

    def desired(self, k: np.ndarray, obs: Observation) -> np.ndarray:
        """The desired capacity (active + warming). Scaling in removes active machines at once while ordered ones
        are still warming, so a scale-in only ever removes active machines above the target: with 12 active,
        10 warming and a target of 12, nothing is removed (removing 10 would leave 2 serving for minutes)."""
        target = self.target(k, obs)
        total = obs.active + obs.warming
        removable = np.maximum(np.minimum(total - target, obs.active - target), 0)
        return np.where(target >= total, target, total - removable).astype(np.int64)

    def to_json(self) -> dict:
        return {"kind": KIND, "utilization": list(self.utilization),
                "cushion_day_max_share": list(self.cushion_day_max_share)}

    @classmethod
    def from_json(cls, d: dict) -> "ActionMapping":
        if d.get("kind") != KIND:
            raise ValueError(f"unknown action mapping kind {d.get('kind')!r} (this build knows {KIND!r})")
        return cls(tuple(float(x) for x in d["utilization"]), tuple(float(x) for x in d["cushion_day_max_share"]))
