"""The fleet model: a numpy core that steps N fleets at once, and the expected profit of a fleet size.

One minute of one fleet, in the seed's order (the policy has seen the load up to the minute before):

1. remove `max(0, -delta)` active machines at once (never below zero);
2. the machines ordered `warmup_minutes` ago join (the active count is capped at `max_machines`);
3. order `max(0, delta)` machines, which join `warmup_minutes` later; warming machines cost nothing;
4. this minute's load arrives; capacity = int(active x (mean + sigma x z)), one z per fleet and minute;
5. reward = served x revenue - active x machine cost - (downtime cost if served/load < downtime share).

Fixed seed defects: a minute with zero load is not downtime (the seed divided by load + 1e-20); the capacity
noise is a counter-based normal drawn from (noise key, minute), so every policy replayed on the same load sees
the same capacity in the same minute (common random numbers), and a fleet needs no sequential RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleetpilot.policies.downtime import downtime_probability
from fleetpilot.sim.params import FleetParams

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TWO53 = float(2**53)


_TWO_PI = 2.0 * np.pi


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place on a uint64 array (returned)."""
    x += _GOLDEN
    x ^= x >> _S30
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    return x


def standard_normal_at(noise_key: np.ndarray, minute: np.ndarray) -> np.ndarray:
    """A standard normal value for each (key, minute): deterministic, vectorized (Box-Muller on splitmix64)."""
    with np.errstate(over="ignore"):
        h1 = np.asarray(minute, dtype=np.uint64) * _M2
        h1 = np.atleast_1d(np.bitwise_xor(np.asarray(noise_key, dtype=np.uint64), h1))
        h1 = _splitmix64(h1)
        h2 = _splitmix64(h1.copy())
    h1 >>= _S11
    u1 = h1.astype(np.float64)
    u1 += 1.0
    u1 /= _TWO53  # (0, 1]
    h2 >>= _S11
    u2 = h2.astype(np.float64)
    u2 /= _TWO53  # [0, 1)
    np.log(u1, out=u1)
    u1 *= -2.0
    np.sqrt(u1, out=u1)
    u2 *= _TWO_PI
    np.cos(u2, out=u2)
    u1 *= u2
    return u1 if np.ndim(noise_key) or np.ndim(minute) else u1[0]


def expected_reward(active: np.ndarray, load_tpm: np.ndarray, p: FleetParams) -> np.ndarray:
    """Expected reward of a minute with `active` machines and a known load, over the capacity noise.

    Capacity C = int(n X), X ~ Normal(mean, sigma). Downtime iff C < share x load, i.e. n X < ceil(share x load).
    Served = min(load, C); E[min(L, Y)] = L - (L - mu) Phi(z) - s phi(z) with Y ~ Normal(mu, s) and the floor
    taken as -0.5 on average (worth at most $0.0005 a minute). Broadcasts over its arguments.
    """
    revenue, p_down = expected_minute(active, load_tpm, p)
    return (
        revenue
        - np.asarray(active, dtype=np.float64) * p.machine_cost_usd_per_minute
        - p_down * (p.downtime_cost_usd_per_minute)
    )


def expected_minute(active: np.ndarray, load_tpm: np.ndarray, p: FleetParams) -> tuple[np.ndarray, np.ndarray]:
    """The parts of `expected_reward`: (expected revenue of the served load in USD, probability of downtime).
    reward = revenue - active x machine cost - p_down x downtime cost."""
    from scipy.special import ndtr  # here, not at module level: the daemon's simulated group never needs it

    n = np.asarray(active, dtype=np.float64)
    load = np.asarray(load_tpm, dtype=np.float64)
    mu_m, sd_m = p.capacity_tpm_per_machine, p.capacity_sigma_tpm
    p_down = downtime_probability(n, load, mu_m, sd_m, p.downtime_served_share)
    with np.errstate(divide="ignore", invalid="ignore"):
        if sd_m > 0:
            mu = n * mu_m - 0.5
            s = np.maximum(n * sd_m, 1e-12)
            z = (load - mu) / s
            shortfall = (load - mu) * ndtr(z) + s * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
            served = np.where(n > 0, load - shortfall, 0.0)
        else:
            served = np.minimum(load, np.floor(n * mu_m))
    served = np.clip(served, 0.0, load)
    return served * p.revenue_usd_per_1k_transactions / 1000.0, p_down


@dataclass
class StepOutcome:
    """What one minute did to each fleet (arrays of shape (N,))."""

    load_tpm: np.ndarray
    capacity_tpm: np.ndarray
    served_tpm: np.ndarray
    down: np.ndarray
    reward: np.ndarray
    active: np.ndarray
    removed: np.ndarray
    ordered: np.ndarray


class FleetCore:
    """N fleets stepped in lockstep (numpy). The per-step env is this with N = 1.

    State per fleet: active machines, the warm-up queue (a ring of `warmup_minutes` slots sharing one head),
    the noise key and the minute counter. Loads are supplied per step by the caller.
    """

    def __init__(self, n: int, params: FleetParams):
        self.n = int(n)
        self.p = params
        w = max(params.warmup_minutes, 1)
        self.active = np.full(self.n, params.initial_machines, dtype=np.int64)
        self.queue = np.zeros((self.n, w), dtype=np.int64)
        self.head = 0
        self.minute = np.zeros(self.n, dtype=np.int64)
        self.noise_key = np.zeros(self.n, dtype=np.uint64)
        self._rev = params.revenue_usd_per_1k_transactions / 1000.0
        self._warming = np.zeros(self.n, dtype=np.int64)  # == queue.sum(axis=1), kept up to date by step/reset

    def reset(self, idx: np.ndarray | slice, noise_key: np.ndarray | int) -> None:
        self.active[idx] = self.p.initial_machines
        self.queue[idx] = 0
        self._warming[idx] = 0
        self.minute[idx] = 0
        self.noise_key[idx] = noise_key

    @property
    def warming(self) -> np.ndarray:
        """(N,) machines ordered and not yet active (a fresh array)."""
        return self._warming.copy()

    def warming_by_minute(self) -> np.ndarray:
        """(N, W): machines joining in 1, 2, ..., W minutes."""
        w = self.queue.shape[1]
        order = (self.head + np.arange(w)) % w
        return self.queue[:, order]

    def step(self, delta: np.ndarray, load_tpm: np.ndarray) -> StepOutcome:
        p = self.p
        delta = np.asarray(delta, dtype=np.int64)
        removed = np.negative(delta)
        np.maximum(removed, 0, out=removed)
        np.minimum(removed, p.max_scale_in_per_minute, out=removed)
        np.minimum(removed, self.active, out=removed)
        ordered = np.maximum(delta, 0)
        np.minimum(ordered, p.max_scale_out_per_minute, out=ordered)
        active = self.active - removed
        if p.warmup_minutes > 0:
            joined = self.queue[:, self.head]
            active += joined
            self._warming -= joined
            self._warming += ordered
            self.queue[:, self.head] = ordered
            self.head = (self.head + 1) % self.queue.shape[1]
        else:
            active += ordered
        np.minimum(active, p.max_machines, out=active)
        self.active = active
        self.minute += 1
        load = np.asarray(load_tpm, dtype=np.float64)
        x = standard_normal_at(self.noise_key, self.minute)
        x *= p.capacity_sigma_tpm
        x += p.capacity_tpm_per_machine
        x *= active
        capacity = np.trunc(x, out=x)
        np.maximum(capacity, 0.0, out=capacity)
        served = np.minimum(load, capacity)
        down = load > 0
        down &= served < p.downtime_served_share * load
        reward = served * self._rev
        reward -= active * p.machine_cost_usd_per_minute
        reward -= down * p.downtime_cost_usd_per_minute
        return StepOutcome(load, capacity, served, down, reward, active.copy(), removed, ordered)
