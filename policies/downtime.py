"""The probability that a fleet is down for a minute: the one formula the simulator's expected reward
(`sim.fleet.expected_minute`) and the `newsvendor` rule share.

A fleet of n machines serves C = int(n X) transactions a minute, X ~ Normal(capacity, sigma) per machine, one draw
for the whole fleet; the minute is down iff C < share x load, i.e. n X < ceil(share x load).
"""

from __future__ import annotations

import numpy as np


def downtime_probability(
    machines: np.ndarray | float,
    load_tpm: np.ndarray | float,
    capacity_tpm: np.ndarray | float,
    sigma_tpm: np.ndarray | float,
    served_share: float,
) -> np.ndarray:
    """P(down) for each broadcast element; 0 where the load is 0, 1 for an empty fleet under load."""
    from scipy.special import ndtr  # here, not at module level: a daemon of other policies never needs it

    n = np.asarray(machines, dtype=np.float64)
    load = np.asarray(load_tpm, dtype=np.float64)
    cap = np.asarray(capacity_tpm, dtype=np.float64)
    sd = np.asarray(sigma_tpm, dtype=np.float64)
    thresh = np.ceil(served_share * load - 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        noisy = sd > 0
        p_down = np.zeros(np.broadcast_shapes(n.shape, load.shape, cap.shape, sd.shape))
        if noisy.any():
            z = (thresh / np.maximum(n, 1e-12) - cap) / np.where(noisy, sd, 1.0)
            p_down = np.where(n > 0, ndtr(z), 1.0)
        if not noisy.all():
            exact = (np.floor(n * cap) < thresh).astype(np.float64)
            p_down = np.where(noisy, p_down, exact)
    return np.where(load > 0, p_down, 0.0)
