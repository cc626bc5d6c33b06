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
| 24 | jump_age | minutes since the last detected load jump / 100 (clipped to 10; 10 when none was seen) |
| 25 | rerise_age | minutes since the last re-rise / 1000 (clipped to 10; 10 when none was seen) |
| 26 | fc_ahead | Holt (level + trend) forecast of the load warm-up minutes ahead / R (>= 0) |
| 27 | fc_err | EMA (alpha 1/60) of abs(load - the fc_ahead made warm-up minutes ago) / R (>= 0; 0 on a ramp) |
| 28 | fc_err_max | leaky maximum of that error (decays 1/360 per minute: a high quantile of the last hours) / R |
| 29 | rise_max | leaky maximum of the rise over the warm-up (load - load warm-up minutes before; decays 1/1440 per minute) / R |
| 30 | jump_rate | leaky count of load jumps and re-rises (decays 1/1440 per minute: about those of the last day) / 10 |
| 31 | periodicity | 1 - EMA abs(load - load a day ago) / EMA abs(load - its daily mean), both alpha 1/1440, clipped to [0, 1]; 0 until a day and an hour of history |
| 32 | overdispersion | log10 of the slow noise (EMA, alpha 0.02, of abs(minute-to-minute change) in tpm) over that of Poisson arrivals at the hour's mean load (2 sqrt(mean / pi)), clipped to [-3, 3]; 0 = Poisson |

Features 26..32 (observation version 3) tell loads apart: a smooth daily load reads high periodicity, a low
forecast error, rise_max and jump_rate; a bursty news-driven one the opposite. They are streaming statistics:
O(N) work per minute, a (warm-up, N) ring of past forecasts and the history ring's lags warm-up and one day.
A model's manifest names the features it reads (`FEATURE_SINCE` tells since which version each name has its
present meaning), so a model trained on an older version keeps working on a newer builder (`policies.onnx_policy`).

A load jump is a sudden rise that a smooth trend and the noise do not explain: the mean of the last 3 minutes
exceeds the straight line fitted to the 20 minutes before (lags 5..24), extrapolated to them (but at least the
mean of lags 5..9, so that the level after a sudden fall is no rise), by more than 5% of the daily maximum and
by more than 5 standard errors (the noise estimated from a slow EMA of the absolute minute-to-minute change). A rise within `JUMP_REFRACTORY_MINUTES` of the last jump is not a new jump; from 10
minutes after it on (before, it is the jump itself) it is a re-rise: the load rose again while the last jump
was recent. On the seed's synthetic load a jump marks a spike's onset and the generator never starts a spike
within 105 minutes of the last onset, so re-rises are rare; on bursty real loads they are common. Whether the
minutes after a jump are safe is for a policy to learn from both features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import numpy as np

from fleetpilot.policies.rise_tail import RiseTail
from fleetpilot.policies.rowstore import RowStore

#: Bump when features are added or any feature's meaning changes; models record it and the features they read.
OBS_VERSION = 3
#: The oldest observation version whose models this build serves (their features by name, `FEATURE_SINCE`).
MIN_OBS_VERSION = 2
FEATURE_NAMES = (
    "load",
    "lag1",
    "lag2",
    "lag3",
    "lag4",
    "lag5",
    "ema_fast",
    "ema_slow",
    "day_max",
    "hour_max",
    "noise",
    "active",
    "warming",
    "util",
    "tod_sin",
    "tod_cos",
    "dow_sin",
    "dow_cos",
    "day_ahead",
    "day_now",
    "week_ahead",
    "has_day",
    "has_week",
    "granularity",
    "jump_age",
    "rerise_age",
    # version 3
    "fc_ahead",
    "fc_err",
    "fc_err_max",
    "rise_max",
    "jump_rate",
    "periodicity",
    "overdispersion",
)
OBS_DIM = len(FEATURE_NAMES)
#: The observation version since which each feature has its present meaning: a model trained on version v may
#: read feature f when FEATURE_SINCE[f] <= v (the same name means the same thing). Change a feature's meaning
#: and you set its entry to the new OBS_VERSION, so older models that read it are refused.
FEATURE_SINCE: Mapping[str, int] = MappingProxyType(
    {name: (MIN_OBS_VERSION if i < 26 else 3) for i, name in enumerate(FEATURE_NAMES)}
)
#: The column of each feature (`FEATURE_INDEX["ema_fast"] == 6`): the builder writes by name, never by number.
FEATURE_INDEX: Mapping[str, int] = MappingProxyType({name: i for i, name in enumerate(FEATURE_NAMES)})
_F = FEATURE_INDEX
_LAGS = slice(_F["lag1"], _F["lag5"] + 1)
assert _LAGS.stop - _LAGS.start == 5  # lag1..lag5 are consecutive
DAY_MINUTES = 1440
WEEK_MINUTES = 7 * DAY_MINUTES
#: History kept per group: a week plus slack for the +-2-minute seasonal windows.
HISTORY_MINUTES = WEEK_MINUTES + 16
_CLIP = 10.0
_A_FAST, _A_MID, _A_SLOW, _A_NOISE = 0.3, 1.0 / 60.0, 1.0 / 360.0, 0.1
_DECAY_DAY, _DECAY_HOUR = 1.0 - 1.0 / DAY_MINUTES, 1.0 - 1.0 / 60.0
#: Jump detector (see the module docstring): recent window, gap, reference window (minutes), thresholds.
_J_RECENT, _J_GAP, _J_REF = 3, 2, 20
_J_SHARE_OF_DAY_MAX, _J_Z, _A_NOISE_SLOW = 0.05, 5.0, 0.02
#: A jump this soon after the last one belongs to the same burst (minutes).
JUMP_REFRACTORY_MINUTES = 100
#: A rise this many minutes or more after a jump, within the refractory time, is a re-rise (before it, the
#: rise is still the jump itself: the reference window has not taken the new level in yet).
_J_RERISE_AFTER = 10
#: Samples needed before the detector may fire: its windows plus time for the slow noise EMA to settle.
_J_WARMUP = _J_RECENT + _J_GAP + _J_REF + 30
#: jump_age of a group that has seen no jump (minutes; the feature clips at 1000 anyway).
JUMP_NONE_MINUTES = 1_000_000
_J_AGE_SCALE, _J_AGE_CLIP = 100.0, 1000
_J_RERISE_SCALE, _J_RERISE_CLIP = 1000.0, 10_000
# --- features of version 3 (see `_step_load_kind`) ---
#: Holt's smoothing of the level and of the trend (per minute).
_A_HOLT_LEVEL, _A_HOLT_TREND = 0.3, 0.05
#: EMA of the forecast's absolute error; decay of its leaky maximum (about 6 hours).
_A_FC_ERR, _DECAY_FC_ERR_MAX = 1.0 / 60.0, 1.0 - 1.0 / 360.0
#: Periodicity: EMA weight of both mean absolute deviations, and the minutes of comparisons before it reads.
_A_PERIOD, _PERIOD_SETTLE = 1.0 / DAY_MINUTES, 60
_JUMP_RATE_SCALE = 10.0
_OVERDISP_CLIP = 3.0


def _jump_weights() -> np.ndarray:
    """Weights w such that (loads at lags 5..24, oldest first) @ w is the least-squares line through them,
    evaluated at the middle of the recent window (lag 1)."""
    x = np.arange(_J_REF, dtype=np.float64)
    at = _J_REF - 1 + _J_GAP + (_J_RECENT + 1) / 2.0  # lag 1 on the same axis (lag 24 is x = 0)
    xc = x - x.mean()
    return 1.0 / _J_REF + xc * (at - x.mean()) / float((xc * xc).sum())


_J_W = _jump_weights()
_J_SPAN = _J_RECENT + _J_GAP + _J_REF


def _jump_matrix() -> np.ndarray:
    """(lags 24..0, oldest first; 3) float32: columns giving the mean of the recent window, the fitted line at
    lag 1 and the mean of lags 5..9 (the level just before the recent window and its gap). float32 is exact
    enough for a threshold (about 0.001 tpm) and several times faster than float64 on the float32 history."""
    m = np.zeros((_J_SPAN, 3))
    m[:_J_RECENT, 0] = 1.0 / _J_RECENT
    first = _J_RECENT + _J_GAP
    m[first:, 1] = _J_W[::-1]  # _J_W runs oldest first (lag 24 .. lag 5)
    m[first : first + 5, 2] = 1.0 / 5
    return np.ascontiguousarray(m[::-1], dtype=np.float32)


_J_MAT = _jump_matrix()
#: E|x_t - x_(t-1)| / std. dev. of x for independent normal noise: 2 / sqrt(pi).
_MEAN_ABS_DIFF = 2.0 / np.sqrt(np.pi)
#: Standard error of (recent mean - extrapolated line) per unit of noise std. dev.
_J_SE = float(np.sqrt(1.0 / _J_RECENT + (_J_W * _J_W).sum()))
#: A rise must exceed this x the slow EMA of |minute-to-minute change|: _J_Z standard errors.
_J_NOISE_FACTOR = _J_Z * _J_SE / _MEAN_ABS_DIFF
#: 1970-01-01 was a Thursday: day-of-week 0 = Monday needs this offset in days.
_EPOCH_DOW = 3
# Time-of-day and day-of-week features by table lookup: the same expressions as computing them per minute,
# evaluated once for every possible value (bit-identical to the per-minute computation).
_TOD = 2 * np.pi * np.arange(DAY_MINUTES, dtype=np.int64) / DAY_MINUTES
_TOD_SIN, _TOD_COS = np.sin(_TOD), np.cos(_TOD)
_DOW = 2 * np.pi * np.arange(7, dtype=np.int64) / 7.0
_DOW_SIN, _DOW_COS = np.sin(_DOW), np.cos(_DOW)


def _uniform(pos: np.ndarray) -> bool:
    """True when every group's ring buffer stands at the same position (the usual case in lockstep)."""
    return pos.shape[0] <= 1 or bool((pos == pos[0]).all())


def _gather(buf: np.ndarray, pos: np.ndarray, k_lo: int, k_hi: int) -> np.ndarray:
    """(N, k_hi - k_lo + 1) float32, possibly a view of `buf`: the loads at lags k_lo..k_hi (in that order).

    `buf` is minute-major (ring position, group). With one position for all groups the rows are one slice (or
    one small index array when the window wraps around the ring), instead of an (N, k) index array."""
    h = buf.shape[0]
    if pos.shape[0] and _uniform(pos):
        first = int(pos[0]) - 1 - k_hi  # the row of lag k_hi
        if first >= 0:
            return buf[first : first + k_hi - k_lo + 1][::-1].T
        return buf[(int(pos[0]) - 1 - np.arange(k_lo, k_hi + 1)) % h].T
    ks = np.arange(k_lo, k_hi + 1)
    idx = (pos[:, None] - 1 - ks[None, :]) % h
    return buf[idx, np.arange(buf.shape[1])[:, None]]


class LoadHistory:
    """Read access to the ring buffer of past loads (transactions per minute): row = ring position, column =
    group, each group at its own position."""

    def __init__(self, buf: np.ndarray, pos: np.ndarray, count: np.ndarray):
        self._buf, self._pos, self.count = buf, pos, count

    def lag(self, k: int | np.ndarray) -> np.ndarray:
        """Load k minutes before the last sample (k = 0 is the last sample); (N,)."""
        h = self._buf.shape[0]
        idx = (self._pos - 1 - np.asarray(k)) % h
        return self._buf[idx, np.arange(self._buf.shape[1])].astype(np.float64)

    def window_mean(self, k_lo: int, k_hi: int) -> np.ndarray:
        """Mean load over lags k_lo..k_hi inclusive; (N,)."""
        # C order: the mean then sums every row in the same order as over a fresh gathered array
        return _gather(self._buf, self._pos, k_lo, k_hi).astype(np.float64, order="C").mean(axis=1)

    def lags(self, k_lo: int, k_hi: int) -> np.ndarray:
        """(N, k_hi - k_lo + 1) float32 loads at lags k_lo..k_hi (in that order); read-only, possibly a view."""
        return _gather(self._buf, self._pos, k_lo, k_hi)

    def available(self, k: int) -> np.ndarray:
        """(N,) bool: a sample k minutes before the last one exists."""
        return self.count > k


def _machine_features(
    active: np.ndarray, warming: np.ndarray, r_m: np.ndarray, load: np.ndarray, cap: np.ndarray
) -> tuple[tuple[int, np.ndarray], ...]:
    """The features that read the machines, float64 and not yet clipped: (column, values) of active / R,
    warming / R and the utilization load / (capacity x max(active, 1)), at most 5. The one place of this
    arithmetic (the builder's observation, `Observation.with_machines`)."""
    u = np.divide(load, cap)
    u /= np.maximum(active, 1)
    np.minimum(u, 5.0, out=u)
    return ((_F["active"], np.divide(active, r_m)), (_F["warming"], np.divide(warming, r_m)), (_F["util"], u))


def _leaky_max(m: np.ndarray, decay: float, x: np.ndarray) -> None:
    """m = max(m * decay, x), in place."""
    m *= decay
    np.maximum(m, x, out=m)


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
    jump_age_minutes: np.ndarray | None = None  #: (N,) minutes since the last detected load jump (feature 24)
    rerise_age_minutes: np.ndarray | None = None  #: (N,) minutes since the last re-rise (feature 25)
    #: the tail of each group's own rises over the warm-up horizon (policies.rise_tail; the builder's live state,
    #: to read during this minute)
    rise: RiseTail | None = None
    forecast_tpm: np.ndarray | None = None  #: (N,) load forecast warm-up minutes ahead (feature 26 x R)
    forecast_error_tpm: np.ndarray | None = None  #: (N,) recent mean absolute error of that forecast (27 x R)
    forecast_error_max_tpm: np.ndarray | None = None  #: (N,) leaky maximum of that error (28 x R)
    #: results that do not depend on the machines, kept for this minute's other decisions (`with_machines` shares
    #: the dict): each minute's observation from the builder has a fresh one; None: nothing kept
    memo: dict | None = field(default=None, repr=False, compare=False)
    #: (N,) the load scale R in machines (the load features are load / (R x capacity); the `granularity` feature is
    #: 1 / R in float32); None: read from that feature
    load_scale_machines: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.load_tpm.shape[0])

    def with_machines(self, active: np.ndarray, warming: np.ndarray) -> Observation:
        """This observation with another fleet's machines (a backtest's other policies, a shadow): the active,
        warming and utilization features recomputed with the builder's arithmetic (the same bytes as the builder's
        own observation with those machines, given `load_scale_machines`); everything else, `memo` included, is
        this observation's, shared: read it, do not write it."""
        act = np.array(active, dtype=np.int64)
        warm = np.array(warming, dtype=np.int64)
        if self.load_scale_machines is not None:
            r_m = self.load_scale_machines
        else:
            r_m = 1.0 / np.maximum(self.features[:, _F["granularity"]].astype(np.float64), 1e-12)
        f = self.features.copy()
        for col, v in _machine_features(act, warm, r_m, self.load_tpm, self.capacity_tpm_per_machine):
            np.clip(v, -_CLIP, _CLIP, out=v)
            f[:, col] = v
        return replace(self, features=f, active=act, warming=warm)

    @property
    def total(self) -> np.ndarray:
        return self.active + self.warming


class ObservationBuilder:
    """Streaming features for N groups. See the module docstring for the feature table.

    The load history is a minute-major ring (`history_minutes` rows, one column per group; `policies.rowstore`):
    in memory, or with `directory` (the daemon's state directory) in an unnamed file of which the process keeps
    resident only the rows of the current minute's reads and writes (the pages are released after each update and
    before each observation). The features are the same bytes either way."""

    def __init__(
        self,
        n: int,
        capacity_tpm_per_machine: float | np.ndarray,
        warmup_minutes: int,
        history_minutes: int = HISTORY_MINUTES,
        directory: Path | None = None,
    ):
        self.n = int(n)
        self.cap = np.broadcast_to(np.asarray(capacity_tpm_per_machine, dtype=np.float64), (self.n,)).copy()
        if np.any(self.cap <= 0):
            raise ValueError("capacity_tpm_per_machine must be positive")
        self.warmup = int(warmup_minutes)
        self.h = int(history_minutes)
        self.store = RowStore(self.h, self.n, np.float32, directory=directory)
        self.buf = self.store.array  #: (history_minutes, N) float32, minute-major
        self.pos = np.zeros(self.n, dtype=np.int64)
        self.count = np.zeros(self.n, dtype=np.int64)
        self.minute = np.zeros(self.n, dtype=np.int64)
        z = lambda: np.zeros(self.n)  # noqa: E731
        self.load, self.ema_fast, self.ema_mid, self.ema_slow = z(), z(), z(), z()
        self.day_max, self.hour_max, self.noise = z(), z(), z()
        self.noise_slow = z()
        self.jump_age = np.full(self.n, JUMP_NONE_MINUTES, dtype=np.int64)
        self.rerise_age = np.full(self.n, JUMP_NONE_MINUTES, dtype=np.int64)
        self.active = np.zeros(self.n, dtype=np.int64)
        self.warming = np.zeros(self.n, dtype=np.int64)
        self._rows = np.arange(self.n)
        self.rise = RiseTail(self.n, self.warmup)
        self._init_load_kind()

    def reset(self, rows: np.ndarray | None = None) -> None:
        """Forget the history of `rows` (all when None)."""
        r = self._rows if rows is None else np.asarray(rows)
        self.count[r] = 0
        self.pos[r] = 0
        self.minute[r] = 0
        self.jump_age[r] = JUMP_NONE_MINUTES
        self.rerise_age[r] = JUMP_NONE_MINUTES
        self.rise.reset(r)

    def update(self, load_tpm: np.ndarray, active: np.ndarray, warming: np.ndarray, minute: np.ndarray) -> np.ndarray:
        """Add one minute for every group. `minute` is minutes since the epoch of the sample.

        A group whose minute is not after its last one keeps its history (the sample is refused); a gap of k
        minutes is filled by holding the last value (and counted as history). Returns the (N,) bool mask of
        accepted samples. Load must be finite and non-negative: callers decide what to do with bad data.
        """
        load = np.asarray(load_tpm, dtype=np.float64)
        minute = np.asarray(minute, dtype=np.int64)
        if self.count.all() and ((minute - self.minute) == 1).all():
            return self._update_next_minute(load, active, warming, minute)
        fresh = self.count == 0
        step = minute - self.minute
        ok = fresh | (step >= 1)
        if not ok.all():
            load = np.where(ok, load, self.load)
        gaps = np.nonzero(~fresh & (step > 1))[0]
        for r in gaps:  # rare: only after missed minutes
            k = int(min(step[r] - 1, self.h))
            idx = (self.pos[r] + np.arange(k)) % self.h
            self.buf[idx, r] = self.load[r]
            self.store.release()
            self.pos[r] = (self.pos[r] + k) % self.h
            self.rise.hold(r, int(self.count[r]), k, float(self.day_max[r]))
            self.count[r] += k
            self.jump_age[r] += k
            self.rerise_age[r] += k
        if fresh.any():
            f = np.nonzero(fresh)[0]
            self._fill_columns(f, load[f])
            for arr in (self.ema_fast, self.ema_mid, self.ema_slow, self.day_max, self.hour_max):
                arr[f] = load[f]
            self.noise[f] = 0.0
            self.noise_slow[f] = 0.0
            self.jump_age[f] = JUMP_NONE_MINUTES
            self.rerise_age[f] = JUMP_NONE_MINUTES
            self.load[f] = load[f]
        accept = ok
        upd = accept & ~fresh
        if upd.all():
            self._step_stats(load, self.load)
        elif upd.any():
            stats = self._stats()
            part = tuple(a[upd] for a in stats)
            self._step_stats(load[upd], self.load[upd], part)
            for a, v in zip(stats, part, strict=True):
                a[upd] = v
        if accept.all():
            self.buf[self.pos, self._rows] = load
            self.pos = (self.pos + 1) % self.h
            self.count += 1
            self.minute = minute.copy()
            self.load = load.copy()
            self.active = np.asarray(active, dtype=np.int64).copy()
            self.warming = np.asarray(warming, dtype=np.int64).copy()
            self._after_sample(None)
        else:
            a = accept
            self.buf[self.pos[a], self._rows[a]] = load[a]
            self.pos[a] = (self.pos[a] + 1) % self.h
            self.count[a] += 1
            self.minute[a] = minute[a]
            self.load[a] = load[a]
            self.active[a] = np.asarray(active, dtype=np.int64)[a]
            self.warming[a] = np.asarray(warming, dtype=np.int64)[a]
            self._after_sample(a)
        self._step_load_kind(load, accept, fresh)
        self.store.release()
        return accept

    def update_where(
        self, take: np.ndarray, load_tpm: np.ndarray, active: np.ndarray, warming: np.ndarray, minute: np.ndarray
    ) -> None:
        """`update` for the groups in the (N,) bool mask `take`; the others take no sample. Their load history
        stays as it is, and a group without history stays without one (the daemon's bad readings, the minutes a
        group's source had no sample for in a backfill)."""
        if take.all():
            self.update(load_tpm, active, warming, minute)
            return
        fresh = self.count == 0
        self.update(np.where(take, load_tpm, self.load), active, warming, np.where(take, minute, self.minute))
        undo = fresh & ~take
        if undo.any():
            self.reset(np.nonzero(undo)[0])

    def set_machines(self, active: np.ndarray, warming: np.ndarray) -> None:
        """The machines of every group now, also of those whose load took no sample this minute (machines are
        read from the backend; the load may be repeated or bad)."""
        self.active[:] = active
        self.warming[:] = warming

    def _update_next_minute(
        self, load: np.ndarray, active: np.ndarray, warming: np.ndarray, minute: np.ndarray
    ) -> np.ndarray:
        """`update` when every group has history and this is its next minute (the usual case)."""
        self._step_stats(load, self.load)
        if _uniform(self.pos):
            self.buf[int(self.pos[0])] = load
        else:
            self.buf[self.pos, self._rows] = load
        self.pos = (self.pos + 1) % self.h
        self.count += 1
        self.minute = minute.copy()
        self.load = load.copy()
        self.active = np.array(active, dtype=np.int64)
        self.warming = np.array(warming, dtype=np.int64)
        self._after_sample(None)
        self._step_load_kind(load, None, None)
        self.store.release()
        return np.ones(self.n, dtype=bool)

    def _stats(self) -> tuple[np.ndarray, ...]:
        """The streaming statistics `_step_stats` moves, in its order."""
        return (self.noise, self.noise_slow, self.ema_fast, self.ema_mid, self.ema_slow, self.day_max, self.hour_max)

    def _step_stats(self, load: np.ndarray, prev: np.ndarray, stats: tuple[np.ndarray, ...] | None = None) -> None:
        """One minute of the streaming statistics, in place: the EMAs of |minute-to-minute change| (noise, slow
        noise), the EMAs of the load and the leaky maxima. The one place of this arithmetic. `stats`: the arrays
        of the rows that take a sample, in `_stats()` order (default: every group's own arrays)."""
        noise, noise_slow, ema_fast, ema_mid, ema_slow, day_max, hour_max = stats or self._stats()
        t = load - prev
        np.abs(t, out=t)
        t -= noise
        noise_slow += _A_NOISE_SLOW * (t + noise - noise_slow)
        t *= _A_NOISE
        noise += t
        for ema, a in ((ema_fast, _A_FAST), (ema_mid, _A_MID), (ema_slow, _A_SLOW)):
            np.subtract(load, ema, out=t)
            t *= a
            ema += t
        day_max *= _DECAY_DAY
        np.maximum(load, day_max, out=day_max)
        hour_max *= _DECAY_HOUR
        np.maximum(load, hour_max, out=hour_max)

    def _after_sample(self, rows: np.ndarray | None) -> None:
        """What follows a stored sample (`rows`: bool mask of the groups that took one, None = all): the jump
        detector, then the tail of rises."""
        self._detect_jumps(rows)
        self.rise.step(self.history.lags, self.count, rows, self.day_max)

    def _detect_jumps(self, rows: np.ndarray | None) -> None:
        """Age every group that took a sample (`rows`: bool mask, None = all) by one minute, then restart the
        jump age of those whose last samples make a jump, or the re-rise age of those whose last jump is
        `_J_RERISE_AFTER` to `JUMP_REFRACTORY_MINUTES` minutes old (module docstring). Runs after the sample
        is stored."""
        if rows is None:
            self.jump_age += 1
            self.rerise_age += 1
        else:
            self.jump_age[rows] += 1
            self.rerise_age[rows] += 1
        ready = self.count > _J_WARMUP
        if rows is not None:
            ready &= rows
        ready &= self.jump_age >= _J_RERISE_AFTER
        if not ready.any():
            return
        # one float32 product over the (N, window) array, oldest first, gives, per group, the recent mean, the
        # line's value and the mean of lags 5..9
        window = np.ascontiguousarray(_gather(self.buf, self.pos, 0, _J_SPAN - 1)[:, ::-1])
        recent, line, before = (window @ _J_MAT).T
        # the line, but never below the level just before: after a fall the line dives, and the return to the
        # new level would read as a rise
        rise = recent - np.maximum(line, before)
        threshold = np.maximum(_J_SHARE_OF_DAY_MAX * self.day_max, _J_NOISE_FACTOR * self.noise_slow)
        up = ready & (rise > threshold)
        if up.any():
            jump = self.jump_age > JUMP_REFRACTORY_MINUTES
            self.rerise_age[up & ~jump] = 0
            self.jump_age[up & jump] = 0

    def _fill_columns(self, cols: np.ndarray, values: np.ndarray) -> None:
        """Every ring position of groups `cols` := `values` (a fresh group's history repeats its first sample), a
        block of rows at a time, releasing the file's pages after each."""
        step = max(1, (4 << 20) // max(4 * self.n, 1))
        for lo in range(0, self.h, step):
            self.buf[lo : lo + step, cols] = values
            self.store.release()

    # --- features of version 3: the forecast, its error, burstiness, periodicity, overdispersion -----------------
    def _init_load_kind(self) -> None:
        """State of the version-3 features (float64 streaming statistics in tpm, like the others)."""
        z = lambda: np.zeros(self.n)  # noqa: E731
        self.holt_level, self.holt_trend, self.fc_now = z(), z(), z()
        self.fc_err, self.fc_err_max, self.rise_max, self.jump_count = z(), z(), z(), z()
        self.day_mean, self.period_err, self.period_dev = z(), z(), z()
        #: the forecasts of the last warm-up minutes: the one made at sample count c lies in row c % rows
        self.fc_ring = np.zeros((max(self.warmup, 1), self.n))

    def _load_kind_stats(self) -> tuple[np.ndarray, ...]:
        return (
            self.holt_level,
            self.holt_trend,
            self.fc_now,
            self.fc_err,
            self.fc_err_max,
            self.rise_max,
            self.jump_count,
            self.day_mean,
            self.period_err,
            self.period_dev,
        )

    def _step_load_kind(self, load: np.ndarray, rows: np.ndarray | None, fresh: np.ndarray | None) -> None:
        """One minute of the version-3 statistics for the groups that took a sample (`rows`: bool mask, None =
        all), after the sample is stored and the jumps detected. `fresh`: the rows that had no history before
        this sample (their statistics start from it)."""
        if fresh is not None and fresh.any():
            f = np.nonzero(fresh & (rows if rows is not None else True))[0]
            for a in (self.holt_level, self.fc_now, self.day_mean):
                a[f] = load[f]
            for a in (self.holt_trend, self.fc_err, self.fc_err_max, self.rise_max, self.jump_count):
                a[f] = 0.0
            self.period_err[f] = 0.0
            self.period_dev[f] = 0.0
            self.fc_ring[:, f] = load[f]
            step = rows & ~fresh if rows is not None else ~fresh
        else:
            step = rows
        idx = None
        if step is not None and not step.all():
            if not step.any():
                return
            idx = np.nonzero(step)[0]
        hist = self.history
        back_w = hist.lags(self.fc_ring.shape[0], self.fc_ring.shape[0])[:, 0]
        has_day = self.h > DAY_MINUTES and bool((self.count > DAY_MINUTES).any())
        back_day = hist.lags(DAY_MINUTES, DAY_MINUTES)[:, 0] if has_day else None
        fired = (self.jump_age == 0) | (self.rerise_age == 0)
        if idx is None:
            self._load_kind_arithmetic(load, self.count, fired, back_w, back_day, self._load_kind_stats(), None)
            return
        stats = tuple(a[idx] for a in self._load_kind_stats())
        self._load_kind_arithmetic(
            load[idx], self.count[idx], fired[idx], back_w[idx], None if back_day is None else back_day[idx], stats, idx
        )
        for a, v in zip(self._load_kind_stats(), stats, strict=True):
            a[idx] = v

    def _load_kind_arithmetic(
        self,
        x: np.ndarray,
        count: np.ndarray,
        fired: np.ndarray,
        back_w: np.ndarray,
        back_day: np.ndarray | None,
        stats: tuple[np.ndarray, ...],
        idx: np.ndarray | None,
    ) -> None:
        """The version-3 statistics of the rows `idx` (None: all) move one minute, in place: `stats` in
        `_load_kind_stats()` order, `x` their loads, `count` their sample counts (this one included), `fired`
        whether a jump or re-rise was detected now, `back_w` / `back_day` the loads a warm-up and a day before."""
        level, trend, fc_now, fc_err, fc_err_max, rise_max, jump_count, day_mean, p_err, p_dev = stats
        horizon = self.fc_ring.shape[0]
        # the forecast made `horizon` samples ago against what came; this minute's forecast takes its place
        uniform = _uniform(count)
        cols = self._rows if idx is None else idx
        if uniform:
            slot = int(count[0]) % horizon if count.shape[0] else 0
            made = self.fc_ring[slot] if idx is None else self.fc_ring[slot, idx]
        else:
            slots = count % horizon
            made = self.fc_ring[slots, cols]
        t = np.subtract(x, made)
        np.abs(t, out=t)
        _leaky_max(fc_err_max, _DECAY_FC_ERR_MAX, t)
        t -= fc_err
        t *= _A_FC_ERR
        fc_err += t
        # Holt: level' = a x + (1 - a)(level + trend); trend' = trend + b (level' - level - trend)
        new_level = np.add(level, trend)
        new_level *= 1.0 - _A_HOLT_LEVEL
        np.multiply(x, _A_HOLT_LEVEL, out=t)
        new_level += t
        np.subtract(new_level, level, out=t)
        t -= trend
        t *= _A_HOLT_TREND
        trend += t
        level[...] = new_level
        np.multiply(trend, float(horizon), out=fc_now)
        fc_now += level
        np.maximum(fc_now, 0.0, out=fc_now)
        if uniform and idx is None:
            self.fc_ring[slot] = fc_now
        elif uniform:
            self.fc_ring[slot, idx] = fc_now
        else:
            self.fc_ring[slots, cols] = fc_now
        # burstiness: the largest recent rise over the warm-up, and the rate of detected jumps
        np.subtract(x, back_w, out=t)
        _leaky_max(rise_max, _DECAY_DAY, t)
        jump_count *= _DECAY_DAY
        jump_count += fired
        # periodicity: how well a day ago explains today, against how far the load strays from its daily mean
        np.subtract(x, day_mean, out=t)
        t *= _A_PERIOD
        day_mean += t
        if back_day is None:
            return
        has = count > DAY_MINUTES
        for acc, ref in ((p_err, back_day), (p_dev, day_mean)):
            np.subtract(x, ref, out=t)
            np.abs(t, out=t)
            t -= acc
            t *= _A_PERIOD
            if not has.all():
                t *= has
            acc += t

    def _load_kind_features(self, g: np.ndarray, inv: np.ndarray) -> None:
        """Write features 26..32 into the feature-major rows `g` (`inv`: 1 / R in tpm)."""
        for name, v in (
            ("fc_ahead", self.fc_now),
            ("fc_err", self.fc_err),
            ("fc_err_max", self.fc_err_max),
            ("rise_max", self.rise_max),
        ):
            np.multiply(v, inv, out=g[_F[name]])
        np.divide(self.jump_count, _JUMP_RATE_SCALE, out=g[_F["jump_rate"]])
        p = g[_F["periodicity"]]
        np.maximum(self.period_dev, 1e-12, out=p)
        np.divide(self.period_err, p, out=p)
        np.subtract(1.0, p, out=p)
        np.maximum(p, 0.0, out=p)
        ready = (self.count > DAY_MINUTES + _PERIOD_SETTLE) & (self.period_dev > 0.0)
        if not ready.all():
            p *= ready
        od = g[_F["overdispersion"]]
        np.maximum(self.ema_mid, 1.0, out=od)
        np.sqrt(od, out=od)
        od *= 2.0 / np.sqrt(np.pi)  # the mean absolute minute-to-minute change of Poisson arrivals
        np.divide(self.noise_slow, od, out=od)
        np.maximum(od, 10.0**-_OVERDISP_CLIP, out=od)
        np.log10(od, out=od)
        np.minimum(od, _OVERDISP_CLIP, out=od)

    def _mean5(self, k_lo: int) -> np.ndarray:
        """(N,) mean load over the 5 lags k_lo..k_lo + 4, as `LoadHistory.window_mean` computes it (numpy's mean
        of 5 float64 values adds them in order, then divides by 5; a test holds the two equal), with the lags
        as contiguous rows."""
        v = np.array(_gather(self.buf, self.pos, k_lo, k_lo + 4).T, dtype=np.float64, order="C")  # (5, N)
        s = v[0] + v[1]
        s += v[2]
        s += v[3]
        s += v[4]
        s /= 5
        return s

    @property
    def history(self) -> LoadHistory:
        return LoadHistory(self.buf, self.pos, self.count)

    def observation(self) -> Observation:
        """This minute's observation of every group, with the machines of the last `update` / `set_machines`."""
        self.store.release()  # what the last observation's readers mapped in
        cap = self.cap
        r_m = np.maximum(self.ema_mid / cap, 1.0)  # R in machine units
        inv = 1.0 / (r_m * cap)  # multiply a load in tpm by this to get load / R
        f = np.empty((self.n, OBS_DIM), dtype=np.float64)
        g = f.T  # feature-major view: g[k] is feature k of every group
        np.multiply(self.load, inv, out=g[_F["load"]])
        np.multiply(_gather(self.buf, self.pos, 1, 5).T, inv, out=g[_LAGS])
        for name, v in (
            ("ema_fast", self.ema_fast),
            ("ema_slow", self.ema_slow),
            ("day_max", self.day_max),
            ("hour_max", self.hour_max),
            ("noise", self.noise),
        ):
            np.multiply(v, inv, out=g[_F[name]])
        for col, v in _machine_features(self.active, self.warming, r_m, self.load, cap):
            g[col] = v
        tod = self.minute % DAY_MINUTES
        dow = (self.minute // DAY_MINUTES + _EPOCH_DOW) % 7
        np.take(_TOD_SIN, tod, out=g[_F["tod_sin"]], mode="clip")
        np.take(_TOD_COS, tod, out=g[_F["tod_cos"]], mode="clip")
        np.take(_DOW_SIN, dow, out=g[_F["dow_sin"]], mode="clip")
        np.take(_DOW_COS, dow, out=g[_F["dow_cos"]], mode="clip")
        w = self.warmup
        has_day = self.count > DAY_MINUTES + 2
        has_week = self.count > WEEK_MINUTES + 2
        hist = self.history
        for name, has, k in (
            ("day_ahead", has_day, DAY_MINUTES - w),
            ("day_now", has_day, DAY_MINUTES),
            ("week_ahead", has_week, WEEK_MINUTES - w),
        ):
            row = g[_F[name]]
            if not has.any():
                row[:] = 1.0
            elif has.all():
                np.multiply(self._mean5(k - 2), inv, out=row)
            else:
                row[:] = np.where(has, self._mean5(k - 2) * inv, 1.0)
        g[_F["has_day"]] = has_day
        g[_F["has_week"]] = has_week
        np.divide(1.0, r_m, out=g[_F["granularity"]])
        np.minimum(self.jump_age, _J_AGE_CLIP, out=g[_F["jump_age"]], casting="unsafe")
        g[_F["jump_age"]] /= _J_AGE_SCALE
        np.minimum(self.rerise_age, _J_RERISE_CLIP, out=g[_F["rerise_age"]], casting="unsafe")
        g[_F["rerise_age"]] /= _J_RERISE_SCALE
        self._load_kind_features(g, inv)
        np.clip(g, -_CLIP, _CLIP, out=g)
        return Observation(
            features=f.astype(np.float32),
            load_tpm=self.load.copy(),
            active=self.active.copy(),
            warming=self.warming.copy(),
            capacity_tpm_per_machine=cap,
            warmup_minutes=self.warmup,
            minute=self.minute.copy(),
            history=hist,
            day_max_tpm=self.day_max.copy(),
            jump_age_minutes=self.jump_age.copy(),
            rerise_age_minutes=self.rerise_age.copy(),
            rise=self.rise,
            forecast_tpm=self.fc_now.copy(),
            forecast_error_tpm=self.fc_err.copy(),
            forecast_error_max_tpm=self.fc_err_max.copy(),
            memo={},
            load_scale_machines=r_m,
        )

    def observations(self, fleets: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Observation]:
        """This minute's observation once per fleet of (active, warming) machines on the same loads (a backtest's
        policies, each on its own fleet): the load's features are computed once, and each fleet's observation is
        `with_machines` of it (the bytes `observation()` would give after `set_machines(active, warming)`; the
        rest, `memo` included, is shared and read-only)."""
        base = self.observation()
        return [base.with_machines(active, warming) for active, warming in fleets]
