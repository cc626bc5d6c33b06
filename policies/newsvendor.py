"""`newsvendor`: the fleet that minimizes machine cost plus the expected downtime penalty, priced on the group's
own recent rises. A rule: it is derived from the business objective, nothing in it was learned or tuned on a load.

Each minute, for each group, the scenarios are the load now plus each bin of the group's tail of rises over the
warm-up horizon (`policies.rise_tail`: the rises of the last days, in each warm-up minute after their origin, as
shares of the hour's largest load), weighted by how often such a rise came: the expected P(down) is the share of
the minutes a fleet decided now must serve, before it can grow, that would be down. A fleet of C machines then
costs

    machine cost x C  +  downtime penalty x sum over scenarios of P(scenario) x P(down | scenario load, C)

where P(down) comes from the per-machine capacity noise (normal, `capacity_sigma_share` of the capacity): a minute
is down when the fleet's capacity is below `downtime_served_share` of the load. The candidates are the fleets that
cover each scenario at 0, 1.5 and 3 standard deviations of the capacity noise; the cheapest wins. With the seed's
prices (a downtime minute costs as much as 4,000 machine-minutes) a rise seen once in a few days is still worth
covering unless it needs many machines; on a calm load the tail is short and the fleet runs hot. Most candidates
are never priced: a bound (`_cheapest`) rules them out, and the fleet chosen is the cheapest of all (up to the
last bit of rounding in the sums: on 10,000 groups the choices were identical to pricing every candidate).

`rise_scale` says what a rise scales with (`policies.rise_tail`): the hour's largest load ("hour", the default:
a burst multiplies the recent level), the daily maximum ("day": a burst adds about as much at any hour), or
"mixture": both hypotheses priced, each with half the probability, which a load of either kind can live with.

`risk` multiplies the downtime penalty (2: twice as averse); the learned policy's `newsvendor` action mapping
picks it per minute. Before `MIN_MINUTES` minutes of rises the rule holds `cold_utilization`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleetpilot.policies.base import MIN_UTILIZATION, Policy, PolicyOutput, saturated_machines, toward
from fleetpilot.policies.downtime import downtime_probability
from fleetpilot.policies.observation import Observation
from fleetpilot.policies.rise_tail import SCALE_MINUTES, UPPER

#: Minutes of recorded rises (decayed mass) before the tail is trusted.
MIN_MINUTES = 60
#: The load the rule sizes from: the larger of the last minute's and the mean of this many (a single low
#: reading does not shrink the fleet).
BASE_MINUTES = 3
#: Groups priced at once (memory: about 0.1 MB per group).
_CHUNK = 256
#: Standard deviations of the capacity noise each scenario is covered at, as candidates.
_Z = np.array([0.0, 1.5, 3.0])
#: Beyond this many standard deviations of the capacity noise, P(down) is taken as exactly 0 or 1.
_Z_BAND = 8.5
#: The bound's passes over each group's sorted candidates (`_cheapest`): every 16th (and the largest) first,
#: then every 4th still in the running, then every one still in the running.
_STRIDES = (16, 4, 1)
#: Fewer groups than this in a chunk are priced on every candidate (the bound's extra calls cost more).
_BOUND_ROWS = 16


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
    rise_scale: Literal["hour", "day", "mixture"] = Field(
        "hour",
        description="what a rise scales with: the hour's largest load, the daily maximum, or both, half each"
        " (policies.rise_tail)",
    )


def newsvendor_machines(
    obs: Observation, p: NewsvendorParams, risk: np.ndarray | float = 1.0, rows: np.ndarray | None = None
) -> np.ndarray:
    """(R,) float machines: the cheapest candidate fleet of each group of `rows` (all when None; module
    docstring); `risk` (scalar or (R,)) multiplies the downtime penalty on top of `p.risk`. Groups without enough
    rises: the cold utilization. The load it sizes from is the larger of the last minute's and the mean of the
    last `BASE_MINUTES`, so one low (or zero) reading does not shrink the fleet. Nothing here reads the machines:
    asked again with the same parameters, risk and rows on an observation that shares this one's `memo` (a
    shadow's), it answers from there."""
    key = None
    if obs.memo is not None:
        risk_a, rows_a = np.asarray(risk, dtype=np.float64), None if rows is None else np.asarray(rows, np.int64)
        params = tuple(vars(p).items())  # the field values (another policy's equal parameters match)
        key = ("newsvendor", params, risk_a.shape, risk_a.tobytes(), None if rows_a is None else rows_a.tobytes())
        hit = obs.memo.get(key)
        if hit is not None:
            return hit.copy()
    out = _machines(obs, p, risk, rows)
    if key is not None:
        obs.memo[key] = out.copy()
    return out


def _machines(obs: Observation, p: NewsvendorParams, risk: np.ndarray | float, rows: np.ndarray | None) -> np.ndarray:
    """`newsvendor_machines` without the memo."""
    idx = np.arange(obs.n) if rows is None else np.asarray(rows, dtype=np.int64)
    x = np.asarray(obs.load_tpm, dtype=np.float64)[idx]
    cap = np.broadcast_to(np.asarray(obs.capacity_tpm_per_machine, dtype=np.float64), (obs.n,))[idx]
    base = np.maximum(x, obs.history.window_mean(0, BASE_MINUTES - 1)[idx])
    out = base / (cap * p.cold_utilization)
    if obs.rise is None or idx.size == 0:
        return out
    warm = obs.rise.mass[idx] >= MIN_MINUTES
    if not warm.any():
        return out
    w = idx[warm]
    # each hypothesis priced: (whether its rises are shares of the daily maximum, its scale per warm group)
    scales = []
    if p.rise_scale != "day":
        hour = np.maximum(obs.history.lags(0, SCALE_MINUTES - 1).max(axis=1)[w].astype(np.float64), 1.0)
        scales.append((False, hour))
    if p.rise_scale != "hour":
        day_max = obs.day_max_tpm if obs.day_max_tpm is not None else obs.load_tpm
        scales.append((True, np.maximum(np.asarray(day_max, dtype=np.float64)[w], 1.0)))
    b0 = base[warm]
    c = cap[warm]
    sd = p.capacity_sigma_share * c
    penalty = p.downtime_cost_usd_per_minute * p.risk * np.broadcast_to(np.asarray(risk, dtype=np.float64), x.shape)
    penalty = penalty[warm]
    per_machine = np.maximum(c[:, None] - _Z[None, :] * sd[:, None], 1e-9)  # (W, Z)
    best = np.empty(w.size)
    noisy = bool((sd > 0).all())
    # a chunk of groups at a time, scenarios included: (chunk, candidates, scenarios) arrays of a few MB, and no
    # array of every group's scenarios (10,000 groups would hold tens of MB at once)
    chunk = _CHUNK // len(scales) ** 2  # candidates and scenarios both grow with the hypotheses
    for lo in range(0, w.size, chunk):
        g = slice(lo, lo + chunk)
        probs = np.concatenate([obs.rise.probabilities(w[g], day=d) / len(scales) for d, _ in scales], axis=1)
        loads = np.concatenate([b0[g, None] + UPPER[None, :] * sc[g, None] for _, sc in scales], axis=1)
        need = p.downtime_served_share * loads  # the capacity each scenario needs to be up
        # candidates: cover each scenario at each z of the capacity noise, (chunk, BINS x hypotheses x Z)
        fleet = _distinct(
            np.maximum(np.ceil(need[:, :, None] / per_machine[g, None, :]), 1.0).reshape(need.shape[0], -1)
        )
        share = partial(
            _downtime_share,
            thresh=np.ceil(need - 1e-9),  # down below this many transactions served
            loads=loads,
            probs=probs,
            c=c[g],
            sd=sd[g],
            served_share=p.downtime_served_share,
            noisy=noisy,
        )
        best[g] = _cheapest(fleet, share, penalty[g], p.machine_cost_usd_per_minute)
    out[warm] = best
    return out


def _downtime_share(
    rows: np.ndarray,
    fleet: np.ndarray,
    thresh: np.ndarray,
    loads: np.ndarray,
    probs: np.ndarray,
    c: np.ndarray,
    sd: np.ndarray,
    served_share: float,
    noisy: bool,
) -> np.ndarray:
    """(P,) candidate fleets of the groups `rows` -> (P,) their expected P(down): the sum over each group's
    (R, S) scenarios (loads, their down thresholds and probabilities) of P(scenario) x P(down | scenario load,
    fleet)."""
    if noisy:  # downtime_probability's formula, fused: every fleet >= 1 machine, every scenario load > 0
        from scipy.special import ndtr  # here, not at module level: a daemon of other policies never needs it

        z = thresh[rows] * (1.0 / (fleet * sd[rows]))[:, None]
        z -= (c / sd)[rows, None]
        pr = probs[rows]
        # only where the capacity noise decides: beyond 8.5 standard deviations P(down) is 0 or 1 to within
        # 1e-17, and many (fleet, scenario) pairs are that far apart; and only for scenarios that can happen (a
        # group's tail has no rises in its largest bins: their P(down) counts zero times, whatever it is)
        band = (np.abs(z) < _Z_BAND) & (pr > 0)
        p_down = (z > 0).astype(np.float64)
        p_down[band] = ndtr(z[band])  # (P, scenarios)
    else:
        pr = probs[rows]
        p_down = downtime_probability(fleet[:, None], loads[rows], c[rows, None], sd[rows, None], served_share)
    return np.einsum("ps,ps->p", p_down, pr)


def _cheapest(
    fleet: np.ndarray,
    share: Callable[[np.ndarray, np.ndarray], np.ndarray],
    penalty: np.ndarray,
    machine_cost: float,
) -> np.ndarray:
    """(R, K) sorted distinct candidate fleets (`_distinct`) -> (R,) the one of least machine cost plus penalty x
    expected P(down), the smallest on a tie: the minimum over all of them, with most never priced (a cost priced
    in another batch of candidates may differ in the last bit: the sums' rounding). `share(rows, fleets)` prices
    candidates one by one, (P,) groups and fleets -> (P,) expected P(down), so no row is padded to another's count.

    In passes (`_STRIDES`): every 16th candidate and each group's largest first; the cheapest priced so far bounds
    the answer from above. The expected P(down) only falls as the fleet grows, so a candidate's machine cost plus
    the penalty of the next larger priced candidate bounds its own cost from below; the next pass prices every
    4th candidate whose bound does not exceed the best so far, the last every such candidate. On the seed's
    loads with a day of history (10,000 groups, both rise scales) about 19 of about 112 distinct candidates a
    group are priced. Fewer than `_BOUND_ROWS` groups are priced on every candidate in one pass."""
    r, k = fleet.shape
    col = np.arange(k)
    distinct = np.ones((r, k), dtype=bool)
    distinct[:, 1:] = fleet[:, 1:] != fleet[:, :-1]  # _distinct's padding repeats the largest
    largest = distinct.sum(axis=1) - 1
    cost = np.full((r, k), np.inf)
    shares = np.full((r, k), np.nan)
    for i, stride in enumerate(_STRIDES if r >= _BOUND_ROWS else (1,)):
        if i == 0:
            todo = distinct & ((col % stride == 0) | (col == largest[:, None]))
        else:
            priced = np.where(np.isfinite(cost), col, k)
            right = np.minimum.accumulate(priced[:, ::-1], axis=1)[:, ::-1]  # next priced (itself if priced)
            lower = machine_cost * fleet + penalty[:, None] * np.take_along_axis(
                shares, np.minimum(right, k - 1), axis=1
            )
            # the slack keeps a candidate whose bound ties the best to within rounding
            best = cost.min(axis=1)
            todo = distinct & (priced == k) & (lower <= best[:, None] * (1.0 + 1e-12)) & (col % stride == 0)
        rr, cc = np.nonzero(todo)
        f = fleet[rr, cc]
        shares[rr, cc] = got = share(rr, f)
        cost[rr, cc] = machine_cost * f + penalty[rr] * got
    least = cost.min(axis=1)
    return np.where(cost == least[:, None], fleet, np.inf).min(axis=1)


def _distinct(fleet: np.ndarray) -> np.ndarray:
    """(R, K) candidate fleets -> (R, K') the same candidates, sorted, each distinct value once in the first
    columns; K' is the most distinct values of any row, and a row with fewer repeats its largest value after them
    (many scenarios round to the same fleet: pricing each distinct fleet once is what costs the time)."""
    fleet = np.sort(fleet, axis=1)
    repeat = np.zeros(fleet.shape, dtype=bool)
    repeat[:, 1:] = fleet[:, 1:] == fleet[:, :-1]
    k = int((~repeat).sum(axis=1).max(initial=0))
    order = np.argsort(repeat, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(fleet, order, axis=1)
    # a row's padding (its repeats) becomes its largest value: the same candidate again, priced the same
    n_distinct = (~repeat).sum(axis=1)
    pad = np.arange(k)[None, :] >= n_distinct[:, None]
    return np.where(pad, fleet[:, -1:], out)


class NewsvendorPolicy(Policy):
    name = "newsvendor"

    def __init__(self, params: NewsvendorParams | None = None):
        self.params = params or NewsvendorParams()

    def reset(self, n: int) -> None:
        pass

    def decide(self, obs: Observation) -> PolicyOutput:
        desired = toward(saturated_machines(newsvendor_machines(obs, self.params)), obs)
        return PolicyOutput(desired, desired)
