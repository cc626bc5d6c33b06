"""The one observation builder, shared by training (the envs), the backtest and the daemon.

It is a streaming, batched feature extractor: `update()` takes one minute of (load, active, warming, minute)
for each of N groups; `observation()` returns the features of every group. Training/serving skew is ruled
out by construction: nothing else computes features, and a test feeds one history to the env and to the
daemon and compares the observations.

All features are scale-free: loads are turned into machine units (load / capacity per machine) and divided by
R, a one-hour moving average of the load in machine units (at least 1), so a policy trained on a 30-machine
service reads the same numbers on a 600-machine one.

| # | name | meaning |
|---|---|---|
| 0 | load | last minute's load / R |
| 1-5 | lag1..lag5 | the load 1..5 minutes before that / R |
| 6 | ema_fast | EMA of load, alpha 0.3 / R |
| 7 | ema_slow | EMA of load, alpha 1/360 (about 6 hours) / R |
| 8 | day_max | leaky maximum of load (decays 1/1440 per minute) / R |
| 9 | hour_max | leaky maximum of load (decays 1/60 per minute) / R |
| 10 | noise | EMA (alpha 0.1) of the absolute minute-to-minute change / R |
| 11 | active | active machines / R |
| 12 | warming | warming machines / R |
| 13 | util | last minute's load in machine units / active machines (clipped to 5) |
| 14-15 | tod_sin, tod_cos | time of day (UTC) |
| 16-17 | dow_sin, dow_cos | day of week (UTC) |
| 18 | day_ahead | mean load 1 day ago, warm-up minutes ahead (+-2 minutes) / R |
| 19 | day_now | mean load 1 day ago at this time (+-2 minutes) / R |
| 20 | week_ahead | mean load 7 days ago, warm-up minutes ahead (+-2 minutes) / R |
| 21 | has_day | 1 when a day of history is there, else 0 (and 18, 19 read 1) |
| 22 | has_week | 1 when a week of history is there, else 0 (and 20 reads 1) |
| 23 | granularity | 1 / R (how big one machine is against the load) |
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Bump when any feature's meaning changes; models record it and loading refuses a mismatch.
OBS_VERSION = 1
FEATURE_NAMES = (
    "load", "lag1", "lag2", "lag3", "lag4", "lag5", "ema_fast", "ema_slow", "day_max", "hour_max", "noise",
    "active", "warming", "util", "tod_sin", "tod_cos", "dow_sin", "dow_cos", "day_ahead", "day_now",
    "week_ahead", "has_day", "has_week", "granularity",
)
OBS_DIM = len(FEATURE_NAMES)
DAY_MINUTES = 1440
WEEK_MINUTES = 7 * DAY_MINUTES
#: History kept per group: a week plus slack for the +-2-minute seasonal windows.
HISTORY_MINUTES = WEEK_MINUTES + 16
_CLIP = 10.0
_A_FAST, _A_MID, _A_SLOW, _A_NOISE = 0.3, 1.0 / 60.0, 1.0 / 360.0, 0.1
_DECAY_DAY, _DECAY_HOUR = 1.0 - 1.0 / DAY_MINUTES, 1.0 - 1.0 / 60.0
#: 1970-01-01 was a Thursday: day-of-week 0 = Monday needs this offset in days.
_EPOCH_DOW = 3


class LoadHistory:
    """Read access to the per-group ring buffer of past loads (transactions per minute)."""

    def __init__(self, buf: np.ndarray, pos: np.ndarray, count: np.ndarray):
        self._buf, self._pos, self.count = buf, pos, count

    def lag(self, k: int | np.ndarray) -> np.ndarray:
        """Load k minutes before the last sample (k = 0 is the last sample); (N,)."""
        h = self._buf.shape[1]
        idx = (self._pos - 1 - np.asarray(k)) % h
        return self._buf[np.arange(self._buf.shape[0]), idx].astype(np.float64)

    def window_mean(self, k_lo: int, k_hi: int) -> np.ndarray:
        """Mean load over lags k_lo..k_hi inclusive; (N,)."""
        h = self._buf.shape[1]
        ks = np.arange(k_lo, k_hi + 1)
        idx = (self._pos[:, None] - 1 - ks[None, :]) % h
        return np.take_along_axis(self._buf, idx, axis=1).astype(np.float64).mean(axis=1)

    def available(self, k: int) -> np.ndarray:
        """(N,) bool: a sample k minutes before the last one exists."""
        return self.count > k


@dataclass
class Observation:
    """What a policy sees for N groups at one decision."""

    features: np.ndarray  #: (N, OBS_DIM) float32, the learned policies' input
    load_tpm: np.ndarray  #: (N,) last minute's load
    active: np.ndarray  #: (N,) active machines
    warming: np.ndarray  #: (N,) warming machines
    capacity_tpm_per_machine: np.ndarray  #: (N,)
    warmup_minutes: int
    minute: np.ndarray  #: (N,) minutes since the Unix epoch of the last sample
    history: LoadHistory
    day_max_tpm: np.ndarray | None = None  #: (N,) leaky daily maximum of the load (feature 8 x R)

    @property
    def n(self) -> int:
        return int(self.load_tpm.shape[0])

    @property
    def total(self) -> np.ndarray:
        return self.active + self.warming


class ObservationBuilder:
    """Streaming features for N groups. See the module docstring for the feature table."""

    def __init__(self, n: int, capacity_tpm_per_machine: float | np.ndarray, warmup_minutes: int,
                 history_minutes: int = HISTORY_MINUTES):
        self.n = int(n)
        self.cap = np.broadcast_to(np.asarray(capacity_tpm_per_machine, dtype=np.float64), (self.n,)).copy()
        if np.any(self.cap <= 0):
            raise ValueError("capacity_tpm_per_machine must be positive")
        self.warmup = int(warmup_minutes)
        self.h = int(history_minutes)
        self.buf = np.zeros((self.n, self.h), dtype=np.float32)
        self.pos = np.zeros(self.n, dtype=np.int64)
        self.count = np.zeros(self.n, dtype=np.int64)
        self.minute = np.zeros(self.n, dtype=np.int64)
        z = lambda: np.zeros(self.n)  # noqa: E731
        self.load, self.ema_fast, self.ema_mid, self.ema_slow = z(), z(), z(), z()
        self.day_max, self.hour_max, self.noise = z(), z(), z()
        self.active = np.zeros(self.n, dtype=np.int64)
        self.warming = np.zeros(self.n, dtype=np.int64)
        self._rows = np.arange(self.n)
        self._lags = np.arange(1, 6)

    def reset(self, rows: np.ndarray | None = None) -> None:
        """Forget the history of `rows` (all when None)."""
        r = self._rows if rows is None else np.asarray(rows)
        self.count[r] = 0
        self.pos[r] = 0
        self.minute[r] = 0

    def update(self, load_tpm: np.ndarray, active: np.ndarray, warming: np.ndarray, minute: np.ndarray) -> np.ndarray:
        """Add one minute for every group. `minute` is minutes since the epoch of the sample.

        A group whose minute is not after its last one keeps its history (the sample is refused); a gap of k
        minutes is filled by holding the last value (and counted as history). Returns the (N,) bool mask of
        accepted samples. Load must be finite and non-negative: callers decide what to do with bad data.
        """
        load = np.asarray(load_tpm, dtype=np.float64)
        minute = np.asarray(minute, dtype=np.int64)
        fresh = self.count == 0
        step = minute - self.minute
        ok = fresh | (step >= 1)
        if not ok.all():
            load = np.where(ok, load, self.load)
        gaps = np.nonzero(~fresh & (step > 1))[0]
        for r in gaps:  # rare: only after missed minutes
            k = int(min(step[r] - 1, self.h))
            idx = (self.pos[r] + np.arange(k)) % self.h
            self.buf[r, idx] = self.load[r]
            self.pos[r] = (self.pos[r] + k) % self.h
            self.count[r] += k
        if fresh.any():
            f = np.nonzero(fresh)[0]
            self.buf[f] = load[f, None]
            for arr in (self.ema_fast, self.ema_mid, self.ema_slow, self.day_max, self.hour_max):
                arr[f] = load[f]
            self.noise[f] = 0.0
            self.load[f] = load[f]
        accept = ok
        prev = self.load
        upd = accept & ~fresh
        if upd.all():
            self.noise += _A_NOISE * (np.abs(load - prev) - self.noise)
            self.ema_fast += _A_FAST * (load - self.ema_fast)
            self.ema_mid += _A_MID * (load - self.ema_mid)
            self.ema_slow += _A_SLOW * (load - self.ema_slow)
            self.day_max = np.maximum(load, self.day_max * _DECAY_DAY)
            self.hour_max = np.maximum(load, self.hour_max * _DECAY_HOUR)
        elif upd.any():
            u = upd
            self.noise[u] += _A_NOISE * (np.abs(load[u] - prev[u]) - self.noise[u])
            self.ema_fast[u] += _A_FAST * (load[u] - self.ema_fast[u])
            self.ema_mid[u] += _A_MID * (load[u] - self.ema_mid[u])
            self.ema_slow[u] += _A_SLOW * (load[u] - self.ema_slow[u])
            self.day_max[u] = np.maximum(load[u], self.day_max[u] * _DECAY_DAY)
            self.hour_max[u] = np.maximum(load[u], self.hour_max[u] * _DECAY_HOUR)
        if accept.all():
            self.buf[self._rows, self.pos] = load
            self.pos = (self.pos + 1) % self.h
            self.count += 1
            self.minute = minute.copy()
            self.load = load.copy()
            self.active = np.asarray(active, dtype=np.int64).copy()
            self.warming = np.asarray(warming, dtype=np.int64).copy()
        else:
            a = accept
            self.buf[self._rows[a], self.pos[a]] = load[a]
            self.pos[a] = (self.pos[a] + 1) % self.h
            self.count[a] += 1
            self.minute[a] = minute[a]
            self.load[a] = load[a]
            self.active[a] = np.asarray(active, dtype=np.int64)[a]
            self.warming[a] = np.asarray(warming, dtype=np.int64)[a]
        return accept

    @property
    def history(self) -> LoadHistory:
        return LoadHistory(self.buf, self.pos, self.count)

    def observation(self) -> Observation:
        cap = self.cap
        r_m = np.maximum(self.ema_mid / cap, 1.0)  # R in machine units
        inv = 1.0 / (r_m * cap)  # multiply a load in tpm by this to get load / R
        f = np.empty((self.n, OBS_DIM), dtype=np.float64)
        f[:, 0] = self.load * inv
        idx = (self.pos[:, None] - 1 - self._lags[None, :]) % self.h
        f[:, 1:6] = np.take_along_axis(self.buf, idx, axis=1) * inv[:, None]
        f[:, 6] = self.ema_fast * inv
        f[:, 7] = self.ema_slow * inv
        f[:, 8] = self.day_max * inv
        f[:, 9] = self.hour_max * inv
        f[:, 10] = self.noise * inv
        f[:, 11] = self.active / r_m
        f[:, 12] = self.warming / r_m
        f[:, 13] = np.minimum(self.load / cap / np.maximum(self.active, 1), 5.0)
        tod = 2 * np.pi * (self.minute % DAY_MINUTES) / DAY_MINUTES
        dow = 2 * np.pi * ((self.minute // DAY_MINUTES + _EPOCH_DOW) % 7) / 7.0
        f[:, 14], f[:, 15] = np.sin(tod), np.cos(tod)
        f[:, 16], f[:, 17] = np.sin(dow), np.cos(dow)
        w = self.warmup
        has_day = self.count > DAY_MINUTES + 2
        has_week = self.count > WEEK_MINUTES + 2
        hist = self.history
        if has_day.any():
            f[:, 18] = np.where(has_day, hist.window_mean(DAY_MINUTES - w - 2, DAY_MINUTES - w + 2) * inv, 1.0)
            f[:, 19] = np.where(has_day, hist.window_mean(DAY_MINUTES - 2, DAY_MINUTES + 2) * inv, 1.0)
        else:
            f[:, 18:20] = 1.0
        if has_week.any():
            f[:, 20] = np.where(has_week, hist.window_mean(WEEK_MINUTES - w - 2, WEEK_MINUTES - w + 2) * inv, 1.0)
        else:
            f[:, 20] = 1.0
        f[:, 21] = has_day
        f[:, 22] = has_week
        f[:, 23] = 1.0 / r_m
        np.clip(f, -_CLIP, _CLIP, out=f)
        return Observation(
            features=f.astype(np.float32), load_tpm=self.load.copy(), active=self.active.copy(),
            warming=self.warming.copy(), capacity_tpm_per_machine=cap, warmup_minutes=self.warmup,
            minute=self.minute.copy(), history=hist, day_max_tpm=self.day_max.copy(),
        )
