"""The hindsight oracle ("E-oracle"): the best expected profit when the whole load is known in advance.

Warming machines cost nothing, so ordering `warmup_minutes` early is the same as choosing the active fleet
size n_t of every minute directly, subject to n_t - n_(t-1) in [-max_in, +max_out] (and no increase during the
first `warmup_minutes` minutes, before any order can arrive). A dynamic program over (minute, fleet size)
maximizes the sum of expected rewards (`sim.fleet.expected_reward`). It relaxes the policies' single
net action per minute (it may add and remove in the same minute), so it is an upper bound on every policy
evaluated on the same load.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fleetpilot.sim.fleet import expected_reward
from fleetpilot.sim.params import FleetParams


def _size_bound(loads: np.ndarray, p: FleetParams) -> int:
    """Largest fleet worth considering: the peak load at half the mean capacity, plus a step."""
    peak = float(loads.max()) if loads.size else 0.0
    need = math.ceil(peak / (0.5 * p.capacity_tpm_per_machine)) + p.max_delta
    return int(min(p.max_machines, max(need, p.initial_machines)))


def oracle_fleet(
    loads: np.ndarray,
    p: FleetParams,
    initial: np.ndarray | int | None = None,
    first_increase: int | None = None,
    reward: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Best active fleet size per minute, (N, T) int64, for loads (N, T) of the minutes to be served.

    `initial`: active machines before the first minute (default p.initial_machines); `first_increase`: the
    first minute index at which the fleet may grow (default p.warmup_minutes). `reward(sizes)`: the (T, N,
    len(sizes)) reward of each fleet size in each minute, instead of `expected_reward` at the known loads (e.g.
    averaged over a load noise the program is not told; `loads` then only bound the sizes considered).
    """
    loads = np.atleast_2d(np.asarray(loads, dtype=np.float64))
    n_runs, t_len = loads.shape
    hi = _size_bound(loads, p)
    sizes = np.arange(hi + 1, dtype=np.float64)
    up, down = p.max_scale_out_per_minute, p.max_scale_in_per_minute
    first_up = p.warmup_minutes if first_increase is None else first_increase
    init = np.broadcast_to(np.asarray(p.initial_machines if initial is None else initial, dtype=np.int64), (n_runs,))
    init = np.minimum(init, hi)
    neg = -np.inf
    # value[t] = best expected reward from minute t on, given n_t; stored for the forward pass.
    value = np.empty((t_len, n_runs, hi + 1))
    nxt = np.zeros((n_runs, hi + 1))
    if reward is None:
        rewards = expected_reward(sizes[None, None, :], loads.T[:, :, None], p)  # (T, N, sizes)
    else:
        rewards = np.asarray(reward(sizes), dtype=np.float64)
        if rewards.shape != (t_len, n_runs, hi + 1):
            raise ValueError(f"reward(sizes) has shape {rewards.shape}, expected {(t_len, n_runs, hi + 1)}")
        if not np.isfinite(rewards).all():
            raise ValueError("reward(sizes) is not finite everywhere")
    for t in range(t_len - 1, -1, -1):
        r = rewards[t]
        if t == t_len - 1:
            value[t] = r
        else:
            value[t] = r + _window_max(nxt, down, up if t + 1 >= first_up else 0, neg)
        nxt = value[t]
    path = np.empty((n_runs, t_len), dtype=np.int64)
    prev = init.copy()
    rows = np.arange(n_runs)
    for t in range(t_len):
        lo = np.maximum(prev - down, 0)
        top = np.minimum(prev + (up if t >= first_up else 0), hi)
        width = up + down + 1
        cand = lo[:, None] + np.arange(width)[None, :]
        ok = cand <= top[:, None]
        vals = np.where(ok, value[t][rows[:, None], np.minimum(cand, hi)], neg)
        prev = cand[rows, np.argmax(vals, axis=1)]
        path[:, t] = prev
    return path


def _one_side_max(v: np.ndarray, reach: int, forward: bool) -> np.ndarray:
    """m[n] = max(v[n .. n + reach]) (forward) or max(v[n - reach .. n]), clipped; by doubling."""
    out = v.copy()
    covered = 0  # out[n] holds the max over a run of covered + 1 values
    while covered < reach:
        k = min(covered + 1, reach - covered)
        if forward:
            out[:, :-k] = np.maximum(out[:, :-k], out[:, k:])
        else:
            out[:, k:] = np.maximum(out[:, k:], out[:, :-k].copy())
        covered += k
    return out


def _window_max(v: np.ndarray, down: int, up: int, neg: float) -> np.ndarray:
    """m[n] = max(v[n - down .. n + up]) along the last axis, clipped to the valid range."""
    out = _one_side_max(v, down, forward=False) if down else v
    return np.maximum(out, _one_side_max(v, up, forward=True)) if up else out
