"""`newsvendor`: the fleet that minimizes machine cost plus the expected downtime penalty, priced on the group's
own recent rises. A rule: it is derived from the business objective, nothing in it was learned or tuned on a load.

Each minute, for each group, the scenarios are the load now plus each bin of the group's tail of rises over the
warm-up horizon (`policies.rise_tail`: the rises of the last days as shares of the hour's largest load), weighted
by how often such a rise came. A fleet of C machines then costs

    machine cost x C  +  downtime penalty x sum over scenarios of P(scenario) x P(down | scenario load, C)

where P(down) comes from the per-machine capacity noise (normal, `capacity_sigma_share` of the capacity): a minute
is down when the fleet serves less than `downtime_served_share` of the load. The candidates are the fleets that
cover each scenario at 0, 1.5 and 3 standard deviations of the capacity noise; the cheapest wins. With the seed's
prices (a downtime minute costs as much as 4,000 machine-minutes) a rise seen once in a few days is still worth
covering unless it needs many machines; on a calm load the tail is short and the fleet runs hot.

`risk` multiplies the downtime penalty (2: twice as averse); the learned policy's `newsvendor` action mapping
picks it per minute. Before `MIN_MINUTES` minutes of rises the rule holds `cold_utilization`.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import ndtr

from fleetpilot.policies.base import MIN_UTILIZATION, Policy, PolicyOutput, saturated_machines, toward
from fleetpilot.policies.observation import Observation
from fleetpilot.policies.rise_tail import SCALE_MINUTES, UPPER

#: Minutes of recorded rises (decayed mass) before the tail is trusted.
MIN_MINUTES = 60
#: Standard deviations of the capacity noise each scenario is covered at, as candidates.
_Z = np.array([0.0, 1.5, 3.0])


class NewsvendorParams(BaseModel):
    """The business objective (the seed's prices by default: `sim.params.FleetParams`), not tuned knobs."""

    model_config = ConfigDict(extra="forbid")
    machine_cost_usd_per_minute: float = Field(0.05, gt=0, description="cost of one active machine per minute")
    downtime_cost_usd_per_minute: float = Field(200.0, ge=0, description="penalty for a minute of downtime")
    capacity_sigma_share: float = Field(
        0.1, ge=0, lt=1, description="std. dev. of a machine's capacity per minute, as a share of its mean"
    )
    downtime_served_share: float = Field(0.995, gt=0, le=1, description="a minute is down below this served share")
    risk: float = Field(1.0, gt=0, le=1000, description="multiplies the downtime penalty")
    cold_utilization: float = Field(
        0.5, ge=MIN_UTILIZATION, le=1, description="load / capacity held until the group has rises to price"
    )


def newsvendor_machines(obs: Observation, p: NewsvendorParams, risk: np.ndarray | float = 1.0) -> np.ndarray:
    """(N,) float machines: the cheapest candidate fleet of each group (module docstring); `risk` (scalar or (N,))
    multiplies the downtime penalty on top of `p.risk`. Groups without enough rises: the cold utilization."""
    n = obs.n
    x = np.asarray(obs.load_tpm, dtype=np.float64)
    cap = np.broadcast_to(np.asarray(obs.capacity_tpm_per_machine, dtype=np.float64), (n,))
    cold = x / (cap * p.cold_utilization)
    if obs.rise is None or n == 0:
        return cold
    mass = obs.rise.mass
    probs = obs.rise.probabilities()
    scale = np.maximum(obs.history.lags(0, SCALE_MINUTES - 1).max(axis=1).astype(np.float64), 1.0)
    loads = x[:, None] + UPPER[None, :] * scale[:, None]  # (N, B) scenario loads
    sd = np.maximum(p.capacity_sigma_share * cap, 1e-12)
    per_machine = p.downtime_served_share * np.maximum(cap[:, None] - _Z[None, :] * sd[:, None], 1e-9)  # (N, Z)
    cand = np.maximum(np.ceil(loads[:, :, None] / per_machine[:, None, :]).reshape(n, -1), 1.0)  # (N, K)
    # P(down | scenario b, fleet k): the capacity per machine falls below what the scenario's load needs
    need = loads[:, None, :] / (p.downtime_served_share * cand[:, :, None])  # (N, K, B)
    p_down = ndtr((need - cap[:, None, None]) / sd[:, None, None])
    penalty = p.downtime_cost_usd_per_minute * p.risk * np.broadcast_to(np.asarray(risk, dtype=np.float64), (n,))
    cost = p.machine_cost_usd_per_minute * cand + penalty[:, None] * np.einsum("nkb,nb->nk", p_down, probs)
    best = cand[np.arange(n), np.argmin(cost, axis=1)]
    return np.where(mass >= MIN_MINUTES, best, cold)


class NewsvendorPolicy(Policy):
    name = "newsvendor"

    def __init__(self, params: NewsvendorParams | None = None):
        self.params = params or NewsvendorParams()

    def reset(self, n: int) -> None:
        pass

    def decide(self, obs: Observation) -> PolicyOutput:
        desired = toward(saturated_machines(newsvendor_machines(obs, self.params)), obs)
        return PolicyOutput(desired, desired)
