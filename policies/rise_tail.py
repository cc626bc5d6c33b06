"""The tail of a group's own load rises over the warm-up horizon: what the `newsvendor` rule prices headroom with.

Each minute, for each group, the builder records how far the load rose above where it stood `warmup` minutes
before (the most it reached in between), as a share of the scale then: the largest load of the hour before that
origin. The shares go into a leaky histogram (`BINS` bins on a log scale from 0.2% to 400% of the scale), whose
counts decay with a time constant of `DECAY_MINUTES`, so the tail follows the load's character over the last days
(a news-driven burst raises it, quiet days lower it again). Three days is long enough to see a 1-in-4,000-minute
rise, the rarity at which the seed's economics (a downtime minute costs as much as 4,000 machine-minutes) still
pay for covering it.

Nothing here depends on one load's constants: the shares are scale-free and the bins span three orders of
magnitude. The builder steps it; a rule or a learned policy's action mapping reads it from the Observation.
"""

from __future__ import annotations

import numpy as np

#: Histogram bins: bin 0 holds no rise (share < 0.2%); the others are log-spaced up to 400% of the scale.
BINS = 32
EDGES = np.concatenate([[0.0], np.geomspace(0.002, 4.0, BINS - 1)])
#: The share each bin stands for when pricing (its upper edge; the last bin: 600%), conservative by a bin.
UPPER = np.concatenate([EDGES[1:], [6.0]])
#: The time constant of the counts' decay (minutes).
DECAY_MINUTES = 4320.0
_DECAY = 1.0 - 1.0 / DECAY_MINUTES
#: The scale: the largest load over this many minutes (ending at the origin of a rise, or now when pricing).
SCALE_MINUTES = 60


class RiseTail:
    """Leaky per-group histograms of rises over `horizon` minutes (module docstring)."""

    def __init__(self, n: int, horizon: int):
        self.horizon = max(int(horizon), 1)
        self.counts = np.zeros((n, BINS))
        self.mass = np.zeros(n)

    def reset(self, rows: np.ndarray) -> None:
        self.counts[rows] = 0.0
        self.mass[rows] = 0.0

    def step(self, lags, count: np.ndarray, rows: np.ndarray | None) -> None:
        """Record this minute's rise for every group that took a sample (`rows`: bool mask, None = all).
        `lags(k_lo, k_hi)` gives the (N, k) loads at those lags (the builder's ring, just after the sample)."""
        w = self.horizon
        ready = count > w + SCALE_MINUTES
        if rows is not None:
            ready = ready & rows
        take = rows if rows is not None else slice(None)
        self.counts[take] *= _DECAY
        self.mass[take] *= _DECAY
        if not ready.any():
            return
        recent = lags(0, w)  # (N, w + 1): lag 0 .. lag w (the origin)
        origin = recent[:, w].astype(np.float64)
        peak = recent[:, :w].max(axis=1).astype(np.float64)
        scale = np.maximum(lags(w, w + SCALE_MINUTES - 1).max(axis=1).astype(np.float64), 1.0)
        share = np.maximum(peak - origin, 0.0) / scale
        b = np.clip(np.searchsorted(EDGES, share, side="right") - 1, 0, BINS - 1)
        r = np.nonzero(ready)[0]
        self.counts[r, b[r]] += 1.0
        self.mass[r] += 1.0

    def probabilities(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(N, BINS) the share of recent minutes whose rise fell in each bin (rows without any: all 0); of
        `rows` only when given."""
        if rows is None:
            return self.counts / np.maximum(self.mass, 1e-12)[:, None]
        return self.counts[rows] / np.maximum(self.mass[rows], 1e-12)[:, None]
