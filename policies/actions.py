"""How a learned policy's discrete action becomes a desired capacity (recorded in each model's manifest).

Action k picks a pair (utilization u, cushion c) from a grid; the desired fleet (active + warming) is

    ceil((base load + c x leaky daily maximum of the load) / (capacity per machine x u))

so the policy chooses, each minute, how hot to run the fleet and how much absolute headroom to keep for a
sudden jump (which scales with the daily peak, not with the current load). Every action is a sane rule: the
policy's job is to pick the right one for the moment, which keeps it safe and explainable.

The base load is the mean of the last `base_minutes` minutes, which averages out per-minute noise, except
when the last minute is more than `surge_ratio` times that mean: then it is the last minute, so a surge is
answered at once. With `base_minutes` 1 (models of the first release, whose manifests lack the field) the
base is simply the last minute's load.

A mapping may add actions after the grid, one per `newsvendor_risk` value r: the `newsvendor` rule's fleet
(policies.newsvendor, the seed's prices) with the downtime penalty multiplied by r, so a policy can choose how
much risk to take as a price instead of a fixed headroom. Manifests without the field have none.
`newsvendor_rise_scale` is the rule's `rise_scale` for those actions (manifests without it: "hour"). A mapping
with newsvendor actions also records `newsvendor_tail`, the version of the rise tail they price
(`policies.rise_tail.TAIL_VERSION`): a model is trained on what that tail meant then (`policies.onnx_policy`
refuses another).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleetpilot.policies.base import MIN_UTILIZATION, saturated_machines, toward
from fleetpilot.policies.newsvendor import NewsvendorParams, newsvendor_machines
from fleetpilot.policies.observation import Observation
from fleetpilot.policies.rise_tail import TAIL_VERSION

KIND = "utilization-cushion-grid"
#: Bounds of a mapping's values (also what a model manifest may hold): a cushion of 10 daily maxima or a surge
#: ratio of 100 is already absurd; beyond, a model would only ever ask for the group's maximum.
MAX_CUSHION_DAY_MAX_SHARE = 10.0
MAX_SURGE_RATIO = 100.0
MAX_RISK = 1000.0
#: What the newsvendor actions' rises scale with (`NewsvendorParams.rise_scale`).
RISE_SCALES = ("hour", "day", "mixture")


@dataclass(frozen=True)
class ActionMapping:
    # Wide enough for a noisy real trace (u 0.45, c 0.3), dense where the seed's load is best run (u 0.7-0.8).
    utilization: tuple[float, ...] = (0.45, 0.5, 0.55, 0.6, 0.64, 0.68, 0.72, 0.74, 0.76, 0.78, 0.8, 0.84)
    cushion_day_max_share: tuple[float, ...] = (0.0, 0.05, 0.1, 0.14, 0.16, 0.18, 0.2, 0.24, 0.3)
    base_minutes: int = 3
    surge_ratio: float = 1.1
    newsvendor_risk: tuple[float, ...] = ()
    newsvendor_rise_scale: str = "hour"
    _u: np.ndarray = field(init=False, repr=False, compare=False)
    _c: np.ndarray = field(init=False, repr=False, compare=False)
    _nv: NewsvendorParams = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.utilization or not self.cushion_day_max_share:
            raise ValueError("utilization and cushion_day_max_share must not be empty")
        if not all(MIN_UTILIZATION <= u <= 1 for u in self.utilization):
            raise ValueError(f"every utilization must be in [{MIN_UTILIZATION}, 1]")
        if not all(0 <= c <= MAX_CUSHION_DAY_MAX_SHARE for c in self.cushion_day_max_share):
            raise ValueError(f"every cushion_day_max_share must be in [0, {MAX_CUSHION_DAY_MAX_SHARE:g}]")
        if not 1 <= self.base_minutes <= 60:
            raise ValueError(f"base_minutes must be 1..60, got {self.base_minutes}")
        if not 1.0 <= self.surge_ratio <= MAX_SURGE_RATIO:
            raise ValueError(f"surge_ratio must be in [1, {MAX_SURGE_RATIO:g}], got {self.surge_ratio}")
        if not all(0 < r <= MAX_RISK for r in self.newsvendor_risk):
            raise ValueError(f"every newsvendor_risk must be in (0, {MAX_RISK:g}]")
        if self.newsvendor_rise_scale not in RISE_SCALES:
            raise ValueError(f"newsvendor_rise_scale must be one of {', '.join(RISE_SCALES)}")
        u, c = np.meshgrid(np.asarray(self.utilization), np.asarray(self.cushion_day_max_share), indexing="ij")
        object.__setattr__(self, "_u", u.ravel())
        object.__setattr__(self, "_c", c.ravel())
        object.__setattr__(self, "_nv", NewsvendorParams(rise_scale=self.newsvendor_rise_scale))

    @property
    def n_grid(self) -> int:
        """Actions of the utilization-cushion grid (0 .. n_grid - 1); the newsvendor actions follow."""
        return int(self._u.shape[0])

    @property
    def n(self) -> int:
        return self.n_grid + len(self.newsvendor_risk)

    def index(self, utilization: float, cushion: float) -> int:
        return int(np.argmin(np.abs(self._u - utilization) + np.abs(self._c - cushion)))

    def describe(self, k: int) -> str:
        if k >= self.n_grid:
            scale = "" if self.newsvendor_rise_scale == "hour" else f" scale={self.newsvendor_rise_scale}"
            return f"newsvendor risk={self.newsvendor_risk[k - self.n_grid]:g}{scale}"
        return f"u={self._u[k]:.2f} cushion={self._c[k]:.2f}xdaymax"

    def base_load(self, obs: Observation) -> np.ndarray:
        """(N,) the load the actions scale from (tpm): see the module docstring."""
        if self.base_minutes <= 1:
            return obs.load_tpm
        mean = obs.history.window_mean(0, self.base_minutes - 1)
        return np.where(obs.load_tpm > self.surge_ratio * mean, obs.load_tpm, mean)

    def target(self, k: np.ndarray, obs: Observation) -> np.ndarray:
        """The fleet action k asks for (machines): `targets` of one fleet."""
        return self.targets(np.broadcast_to(np.asarray(k, dtype=np.int64), (obs.n,))[None], obs)[0]

    def targets(self, k: np.ndarray, obs: Observation) -> np.ndarray:
        """(F, N) actions of F fleets on `obs`'s N loads -> (F, N) the fleets they ask for:
            ceil((base load + c x leaky daily maximum) / (capacity per machine x u)) for a grid action, the
            `newsvendor` rule's fleet at the action's price of risk for the others.
        A target reads the load, never the machines, so any fleet's observation of these loads gives the same
        answer, and each distinct (action, load) pair is computed once: F fleets that mostly take the same
        actions (the rollouts of `training.policy_iteration`) cost little more than one."""
        k = np.asarray(k, dtype=np.int64)
        if k.ndim != 2 or k.shape[1] != obs.n:
            raise ValueError(f"actions of shape {k.shape}: expected (fleets, {obs.n})")
        if k.size and (k.min() < 0 or k.max() >= self.n):
            raise ValueError(f"action outside [0, {self.n})")
        n = obs.n
        pairs, inverse = np.unique(k * n + np.arange(n), return_inverse=True)
        act, rows = np.divmod(pairs, n)
        g = np.minimum(act, self.n_grid - 1)
        day_max = obs.day_max_tpm if obs.day_max_tpm is not None else obs.load_tpm
        cap = np.broadcast_to(np.asarray(obs.capacity_tpm_per_machine), (n,))
        with np.errstate(over="ignore"):
            need = (self.base_load(obs)[rows] + self._c[g] * day_max[rows]) / (cap[rows] * self._u[g])
        nv = np.nonzero(act >= self.n_grid)[0]
        if nv.size:
            risk = np.asarray(self.newsvendor_risk)[act[nv] - self.n_grid]
            need[nv] = newsvendor_machines(obs, self._nv, risk, rows=rows[nv])
        return saturated_machines(need)[inverse.reshape(-1)].reshape(k.shape)

    def desired(self, k: np.ndarray, obs: Observation) -> np.ndarray:
        """The desired capacity (active + warming) for action k's target (`policies.base.toward`)."""
        return toward(self.target(k, obs), obs)

    def to_json(self) -> dict:
        return {
            "kind": KIND,
            "utilization": list(self.utilization),
            "cushion_day_max_share": list(self.cushion_day_max_share),
            "base_minutes": self.base_minutes,
            "surge_ratio": self.surge_ratio,
            **({"newsvendor_risk": list(self.newsvendor_risk)} if self.newsvendor_risk else {}),
            **({"newsvendor_tail": TAIL_VERSION} if self.newsvendor_risk else {}),
            **({"newsvendor_rise_scale": self.newsvendor_rise_scale} if self.newsvendor_rise_scale != "hour" else {}),
        }

    @classmethod
    def from_json(cls, d: dict) -> ActionMapping:
        if d.get("kind") != KIND:
            raise ValueError(f"unknown action mapping kind {d.get('kind')!r} (this build knows {KIND!r})")
        return cls(
            tuple(float(x) for x in d["utilization"]),
            tuple(float(x) for x in d["cushion_day_max_share"]),
            int(d.get("base_minutes", 1)),
            float(d.get("surge_ratio", 1.1)),
            tuple(float(x) for x in d.get("newsvendor_risk", ())),
            str(d.get("newsvendor_rise_scale", "hour")),
        )
