"""The tail of a group's own load rises over the warm-up horizon: what the `newsvendor` rule prices headroom with.

Each minute, for each group, the builder takes the origin `warmup` minutes before and records how far the load
rose above the origin's load in each of the `warmup` minutes after it, each with weight 1 / `warmup`, as shares
of the scale then: the largest load of the hour before that origin. A fleet decided at the origin cannot grow
before those minutes are over, so P(down) priced against this tail is the expected share of them that are down:
the downtime rate the objective charges. (The most the load reached in between, recorded once, would charge a
one-minute burst as `warmup` minutes of downtime: it bought insurance against load noise that the objective does
not charge for.) The shares go into a leaky histogram (`BINS` bins on a log scale from 0.2% to 400% of the scale), whose
counts decay with a time constant of `DECAY_MINUTES`, so the tail follows the load's character over the last days
(a news-driven burst raises it, quiet days lower it again). Three days is long enough to see a 1-in-4,000-minute
rise, the rarity at which the seed's economics (a downtime minute costs as much as 4,000 machine-minutes) still
pay for covering it.

A second histogram (`counts_day`) records the same rises as shares of another scale: the leaky daily maximum
of the load at the origin (the builder's `day_max`). The two are two hypotheses about how the next rise scales:
with the recent level (a burst multiplies what the load was doing) or with the day's peak (a burst adds about as
much at night as at the peak, as the seed's synthetic spikes do). The `newsvendor` rule prices either or both
(`NewsvendorParams.rise_scale`).

Nothing here depends on one load's constants: the shares are scale-free and the bins span three orders of
magnitude. The builder steps it; a rule or a learned policy's action mapping reads it from the Observation.
"""

from __future__ import annotations

import numpy as np

#: What the tail records, versioned so that a model whose actions price it says which meaning it was trained on
#: (its manifest's `action_mapping.newsvendor_tail`; `policies.onnx_policy` refuses another): 1, the most the load
#: reached over the warm-up, once per origin (manifests without the field); 2, each warm-up minute, weight 1 / w.
TAIL_VERSION = 2
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
        self._both = np.zeros((2, n, BINS))  # both histograms in one array: one decay, one add per minute
        self.mass = np.zeros(n)
        #: the daily maximum of the last horizon + 1 samples of each group, indexed by sample count
        self._day_ring = np.zeros((self.horizon + 1, n))

    @property
    def counts(self) -> np.ndarray:
        """(N, BINS) the rises as shares of the hour's largest load (a view of the histograms)."""
        return self._both[0]

    @property
    def counts_day(self) -> np.ndarray:
        """(N, BINS) the same rises as shares of the daily maximum (a view of the histograms)."""
        return self._both[1]

    def reset(self, rows: np.ndarray) -> None:
        self._both[:, rows] = 0.0
        self.mass[rows] = 0.0
        self._day_ring[:, rows] = 0.0

    def step(self, lags, count: np.ndarray, rows: np.ndarray | None, day_max: np.ndarray) -> None:
        """Record this minute's rise for every group that took a sample (`rows`: bool mask, None = all).
        `lags(k_lo, k_hi)` gives the (N, k) loads at those lags (the builder's ring, just after the sample);
        `day_max` the (N,) leaky daily maximum of the load, just updated with the sample."""
        w = self.horizon
        ready = count > w + SCALE_MINUTES
        if rows is not None:
            ready = ready & rows
        if rows is None:
            self._both *= _DECAY
            self.mass *= _DECAY
        else:
            self._both[:, rows] *= _DECAY
            self.mass[rows] *= _DECAY
        # the ring holds the daily maximum of the last w + 1 samples: slot count % (w + 1) takes this sample's, and
        # the origin's (w samples ago) is in the slot the next sample will take
        if rows is None and count.shape[0] and (count == count[0]).all():  # the usual case: one slot for all
            self._day_ring[int(count[0]) % (w + 1)] = day_max
            day = self._day_ring[int(count[0] + 1) % (w + 1)]
        else:
            g = np.arange(count.shape[0]) if rows is None else np.nonzero(rows)[0]
            self._day_ring[count[g] % (w + 1), g] = day_max[g]
            day = np.zeros(count.shape[0])
            day[g] = self._day_ring[(count[g] + 1) % (w + 1), g]
        if not ready.any():
            return
        r = np.nonzero(ready)[0]
        recent = lags(0, w)[r].astype(np.float64)  # (R, w + 1): lag 0 .. lag w (the origin)
        rises = np.maximum(recent[:, :w] - recent[:, w:], 0.0)  # (R, w): each minute after the origin
        hour = np.maximum(lags(w, w + SCALE_MINUTES - 1)[r].max(axis=1).astype(np.float64), 1.0)
        # the rises as shares of both scales, (2R, w): the hour's rows, then the day's
        scale = np.concatenate((hour, np.maximum(day[r], 1.0)))
        # rises are >= 0 = EDGES[0], so the bin is >= 0 without a clip from below
        b = np.minimum(
            np.searchsorted(EDGES, np.concatenate((rises, rises)) / scale[:, None], side="right") - 1, BINS - 1
        )
        # each of the w minutes weighs 1 / w: one origin adds 1 to the mass, spread over its minutes' bins. The
        # rows' cells of `_both` (flat: histogram, group, bin) ascend with the rows and each row's bins are sorted,
        # so equal cells are runs: add each run's length / w to its cell only (the same sums as counting every
        # cell, without touching the whole (2, N, BINS) array)
        n = self.mass.shape[0]
        first = np.concatenate((r, r + n)) * BINS
        keys = (first[:, None] + np.sort(b, axis=1)).ravel()
        bounds = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1], [True])))
        start, runs = bounds[:-1], bounds[1:] - bounds[:-1]
        cells = self._both.reshape(-1)  # a view: _both is only ever changed in place
        cells[keys[start]] += runs * (1.0 / w)
        self.mass[r] += 1.0

    def hold(self, row: int, count: int, k: int, day_max: float) -> None:
        """`k` minutes of group `row` were missed after its sample number `count` (the builder holds the last load
        through them and takes no rise): their slots of the daily-maximum ring take the daily maximum held then,
        so that no rise after the gap is scaled by a value from before it, or by the ring's empty zero."""
        w1 = self.horizon + 1
        slots = (count + 1 + np.arange(min(k, w1))) % w1
        self._day_ring[slots, row] = day_max

    def probabilities(self, rows: np.ndarray | None = None, day: bool = False) -> np.ndarray:
        """(N, BINS) the share of recent minutes whose rise fell in each bin (rows without any: all 0); of
        `rows` only when given; with `day`, of the rises as shares of the daily maximum."""
        counts = self.counts_day if day else self.counts
        if rows is None:
            return counts / np.maximum(self.mass, 1e-12)[:, None]
        return counts[rows] / np.maximum(self.mass[rows], 1e-12)[:, None]
