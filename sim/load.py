"""Load: the seed's synthetic generator and replay of per-minute trace CSVs.

A load is a float64 array of transactions per minute, one entry per minute, with the UTC time of its first
minute. All randomness comes from the `numpy.random.Generator` passed in (the env's `np_random`).
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from fleetpilot.policies.errors import UserError
from fleetpilot.policies.files import MAX_TRACE_BYTES, FileReadError, open_regular
from fleetpilot.sim.params import BroadLoadParams, SyntheticLoadParams, TraceWindowParams

#: Longest line of a trace CSV (characters): a timestamp and a count take about 30.
MAX_TRACE_LINE_CHARS = 4096
#: What undecodable bytes become under errors="surrogateescape".
_UNDECODABLE = re.compile("[\udc80-\udcff]")

#: Synthetic loads have no calendar; they start on this Monday, 00:00 UTC (their daily phase is random anyway).
SYNTHETIC_START = datetime(2026, 1, 5, tzinfo=UTC)


class TraceError(UserError):
    """A trace file that cannot be used; the message names the file, the line and the reason."""


@dataclass
class Load:
    """Transactions per minute, one value per minute starting at `start` (UTC)."""

    name: str
    load_tpm: np.ndarray
    start: datetime = field(default=SYNTHETIC_START)

    @property
    def minutes(self) -> int:
        return int(self.load_tpm.shape[0])

    def start_minute(self) -> int:
        """Minutes since the Unix epoch of the first value (used for time-of-day features)."""
        return int(self.start.timestamp() // 60)

    def window(self, first: int, minutes: int, name: str | None = None) -> Load:
        if first < 0 or first + minutes > self.minutes:
            raise ValueError(f"window [{first}, {first + minutes}) is outside {self.name} ({self.minutes} minutes)")
        return Load(
            name or f"{self.name}[{first}:{first + minutes}]",
            self.load_tpm[first : first + minutes].copy(),
            self.start + timedelta(minutes=first),
        )

    def rescaled(self, peak_tpm: float) -> Load:
        """The same shape with its maximum at `peak_tpm`."""
        peak = float(self.load_tpm.max()) if self.minutes else 0.0
        if peak <= 0:
            raise TraceError(f"{self.name}: cannot rescale to --peak-tpm {peak_tpm:g}: the trace is all zeros")
        return Load(self.name, self.load_tpm * (peak_tpm / peak), self.start)


def synthetic_load(
    rng: np.random.Generator, minutes: int, params: SyntheticLoadParams | None = None, max_load_tpm: float = 100_000.0
) -> np.ndarray:
    """The seed's `LoadSimulator` for `minutes` minutes (its minute counter starts at 1).

    Fixed seed defects: randomness from `rng`, not the global RNG; the last minute of a spike no longer adds a
    negative amount.
    """
    return synthetic_parts(rng, minutes, params, max_load_tpm).load()


@dataclass(frozen=True)
class SyntheticParts:
    """What `synthetic_load` draws, kept apart: the cyclic mean (daily sine x low-frequency factor), the
    per-minute multiplicative noise factors (Normal(1, `noise_share`)) and the spikes, all (minutes,)."""

    cyclic_mean: np.ndarray
    noise_share: float
    noise: np.ndarray
    spikes: np.ndarray
    max_load_tpm: float

    def load(self, noise: np.ndarray | float | None = None) -> np.ndarray:
        """The load with these noise factors (default: the drawn ones), as the generator rounds it."""
        factor = self.noise if noise is None else noise
        return np.floor(np.clip(self.cyclic_mean * factor + self.spikes, 0.0, self.max_load_tpm))


def synthetic_parts(
    rng: np.random.Generator, minutes: int, params: SyntheticLoadParams | None = None, max_load_tpm: float = 100_000.0
) -> SyntheticParts:
    """`synthetic_load`'s draws, in its order, with the parts kept apart (`SyntheticParts`)."""
    p = params or SyntheticLoadParams()
    lo = rng.uniform(*p.daily_min_tpm)
    hi = lo + rng.uniform(*p.daily_span_tpm)
    noise = rng.uniform(*p.noise_share)
    phase0 = rng.uniform(-np.pi, np.pi)
    lf_amp = rng.uniform(*p.lf_amplitude)
    lf_period = rng.uniform(*p.lf_period_days)
    lf_phase = rng.uniform(-np.pi, np.pi)

    t = np.arange(1, minutes + 1, dtype=np.float64)
    phase = t / (p.day_minutes / 2.0) * np.pi + phase0
    cyclic = (lo + hi) / 2.0 + (hi - lo) / 2.0 * np.sin(phase)
    cyclic *= 1.0 + np.sin(phase / lf_period + lf_phase) * lf_amp
    factors = rng.normal(1.0, noise, size=minutes)

    spikes = np.zeros(minutes)
    start = 0.0  # minutes elapsed before the current spike's countdown began
    while True:
        gap = rng.uniform(*p.spike_gap_minutes)
        width = p.spike_width_min_minutes + rng.lognormal(*p.spike_width_lognormal)
        height = hi * rng.uniform(*p.spike_height_share)
        # The seed decrements the countdown before use: the spike is on from the first minute where gap - k <= 0.
        first = int(math.ceil(start + gap - 1))  # 0-based index of the first minute with countdown <= 0
        if first >= minutes:
            break
        k = np.arange(first, minutes)
        on = height * (1.0 + (start + gap - 1 - k) / width)  # (1 + t/w) with t = countdown left, <= 0
        ends = np.nonzero(on < 0)[0]
        last = first + (int(ends[0]) if ends.size else k.size)  # the minute whose value turned negative
        spikes[first:last] = on[: last - first]
        if not ends.size:
            break
        start = float(last + 1)  # the countdown restarts the minute after the spike ended
    return SyntheticParts(cyclic, float(noise), factors, spikes, float(max_load_tpm))


def _parse_time(text: str) -> datetime:
    s = text.strip()
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    ts = datetime.fromisoformat(s)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def read_trace(path: str | Path, fill_gaps: bool = False) -> Load:
    """Read a `timestamp,requests` CSV with one row per minute.

    Refuses, naming file, line and reason: a missing column, a timestamp that does not parse or is not on a
    whole minute, a count that is not a finite non-negative number, a duplicate or out-of-order timestamp, a
    gap (unless `fill_gaps`, which interpolates the missing minutes linearly).
    """
    path = Path(path)
    name = str(path)
    try:
        binary = open_regular(path, MAX_TRACE_BYTES)
    except FileReadError as exc:
        raise TraceError(f"{name}: {exc}") from None
    except OSError as exc:
        raise TraceError(f"{name}: cannot read: {exc.strerror or exc}") from None
    times: list[int] = []
    values: list[float] = []
    # streamed line by line (universal newlines, as csv wants), a byte-order mark dropped, a line never longer
    # than MAX_TRACE_LINE_CHARS: a 40 MB field is refused at its line, not read whole
    fh = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")

    def lines():
        n = 0
        while True:
            line = fh.readline(MAX_TRACE_LINE_CHARS + 1)
            if not line:
                return
            n += 1
            if len(line) > MAX_TRACE_LINE_CHARS:
                raise TraceError(f"{name}:{n}: line longer than {MAX_TRACE_LINE_CHARS} characters")
            if _UNDECODABLE.search(line):
                raise TraceError(f"{name}:{n}: not UTF-8 text")
            yield line

    with fh:
        reader = csv.reader(lines())
        try:
            header = next(reader)
        except StopIteration:
            raise TraceError(f"{name}:1: empty file, expected a header 'timestamp,requests'") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise TraceError(f"{name}:1: not a text CSV ({exc.__class__.__name__})") from None
        cols = [h.strip().lower() for h in header]
        for i, c in enumerate(cols):
            if c in ("timestamp", "requests") and c in cols[:i]:
                raise TraceError(f"{name}:1: duplicate column '{c}'")
        for need in ("timestamp", "requests"):
            if need not in cols:
                raise TraceError(f"{name}:1: missing column '{need}' (header is {','.join(header) or 'empty'!s})")
        it, ir = cols.index("timestamp"), cols.index("requests")
        prev: int | None = None
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) <= max(it, ir):
                    raise TraceError(f"{name}:{line}: expected {len(cols)} fields, found {len(row)}")
                m, v = _minute_and_count(f"{name}:{line}", row[it], row[ir])
                if prev is not None:
                    if m == prev:
                        raise TraceError(f"{name}:{line}: duplicate timestamp {row[it].strip()}")
                    if m < prev:
                        raise TraceError(f"{name}:{line}: timestamp {row[it].strip()} is earlier than the row before")
                    if m > prev + 1 and not fill_gaps:
                        raise TraceError(
                            f"{name}:{line}: gap of {m - prev - 1} minute(s) before {row[it].strip()} "
                            "(use --fill-gaps to interpolate)"
                        )
                times.append(m)
                values.append(v)
                prev = m
        except csv.Error as exc:
            raise TraceError(f"{name}:{reader.line_num}: malformed CSV ({exc})") from None
    if not times:
        raise TraceError(f"{name}:2: no data rows")
    t = np.asarray(times, dtype=np.int64)
    load = np.asarray(values, dtype=np.float64)
    if t[-1] - t[0] + 1 != t.size:  # only reachable with fill_gaps
        full = np.arange(t[0], t[-1] + 1)
        load = np.interp(full, t, load)
    start = datetime.fromtimestamp(int(t[0]) * 60, tz=UTC)
    return Load(path.stem, load, start)


def _minute_and_count(where: str, timestamp: str, requests: str) -> tuple[int, float]:
    """One row's epoch minute and request count, or a TraceError naming `where` (file:line) and the reason."""
    try:
        ts = _parse_time(timestamp)
    except ValueError:
        raise TraceError(f"{where}: timestamp {timestamp.strip()!r} is not ISO-8601") from None
    if ts.second or ts.microsecond:
        raise TraceError(f"{where}: timestamp {timestamp.strip()!r} is not the start of a minute")
    try:
        v = float(requests)
    except ValueError:
        raise TraceError(f"{where}: requests {requests.strip()!r} is not a number") from None
    if not math.isfinite(v):
        raise TraceError(f"{where}: requests {requests.strip()!r} is not finite")
    if v < 0:
        raise TraceError(f"{where}: requests {requests.strip()!r} is negative")
    return int(ts.timestamp() // 60), v


def write_trace(path: str | Path, load: Load) -> None:
    """Write `timestamp,requests` rows, one per minute."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        fh.write("timestamp,requests\n")
        t0 = load.start
        for i, v in enumerate(load.load_tpm):
            ts = (t0 + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            fh.write(f"{ts},{int(round(v))}\n")


@dataclass(frozen=True)
class Augment:
    """Random changes applied to each training window of a real trace.

    amplitude: uniform range of a factor applied to the whole window;
    noise_share: uniform range of the std. dev. of extra multiplicative per-minute noise;
    shift_minutes: largest time shift (the window's start moves by up to this, both ways).
    """

    amplitude: tuple[float, float] = (0.8, 1.2)
    noise_share: tuple[float, float] = (0.0, 0.03)
    shift_minutes: int = 60


def sample_window(rng: np.random.Generator, load: Load, minutes: int, augment: Augment | None = None) -> Load:
    """A random window of `minutes` minutes from `load`, augmented if asked."""
    if load.minutes < minutes:
        raise ValueError(f"{load.name} has {load.minutes} minutes, fewer than the {minutes} asked for")
    first = int(rng.integers(0, load.minutes - minutes + 1))
    w = load.window(first, minutes)
    if augment is not None:
        shift = int(rng.integers(-augment.shift_minutes, augment.shift_minutes + 1))
        first = min(max(first + shift, 0), load.minutes - minutes)
        w = load.window(first, minutes)
        amp = rng.uniform(*augment.amplitude)
        sd = rng.uniform(*augment.noise_share)
        w.load_tpm = np.floor(np.maximum(w.load_tpm * amp * rng.normal(1.0, sd, size=minutes), 0.0))
    return w


def _draw(rng: np.random.Generator, params: BroadLoadParams | TraceWindowParams, name: str, log: bool) -> float:
    lo, hi = getattr(params, name)
    if log:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return float(rng.uniform(lo, hi))


def _heavy_noise(rng: np.random.Generator, minutes: int, share: float, df: float) -> np.ndarray:
    """Multiplicative per-minute factors with mean 1 and std. dev. `share`: Student-t shocks (df > 2), >= 0."""
    z = rng.standard_t(df, size=minutes) * (share / math.sqrt(df / (df - 2.0)))
    return np.maximum(1.0 + z, 0.0)


#: The order the broad generator draws its scalars in (part of what a seed reproduces).
BROAD_DRAWS = (
    "peak_tpm",
    "daily_floor_share",
    "daily_second_harmonic",
    "daily_sharpness",
    "weekend_share",
    "trend_per_day",
    "wander_amplitude",
    "wander_period_days",
    "noise_share",
    "noise_tail_df",
    "spikes_per_day",
    "burst_extra_spikes",
    "burst_gap_minutes",
    "spike_height_share",
    "spike_ramp_minutes",
    "spike_length_minutes",
)


def broad_load(
    rng: np.random.Generator, minutes: int, params: BroadLoadParams | None = None, max_load_tpm: float = 100_000.0
) -> tuple[np.ndarray, int, dict]:
    """One episode of the randomized generator (`BroadLoadParams`): (load, epoch minute of its first value,
    the generator drawn for it). Its calendar starts at a random minute of the week after `SYNTHETIC_START` (a
    Monday), so weekends fall on Saturday and Sunday and the daily peak at a random hour."""
    p = params or BroadLoadParams()
    d: dict = {name: _draw(rng, p, name, p.is_log(name)) for name in BROAD_DRAWS}
    day = p.day_minutes
    offset = int(rng.integers(0, 7 * day))
    phase1, phase2, wander_phase = rng.uniform(0.0, 2 * np.pi, size=3)
    t = np.arange(offset, offset + minutes, dtype=np.float64)  # minutes since SYNTHETIC_START
    w = 2 * np.pi / day

    def harmonics(x: np.ndarray) -> np.ndarray:
        return np.sin(w * x + phase1) + d["daily_second_harmonic"] * np.sin(2 * w * x + phase2)

    one_day = harmonics(np.arange(day, dtype=np.float64))
    lo, hi = float(one_day.min()), float(one_day.max())
    shape = np.clip((harmonics(t) - lo) / (hi - lo), 0.0, 1.0) ** d["daily_sharpness"]
    floor = d["daily_floor_share"]
    level = floor + (1.0 - floor) * shape
    # weekday 1, weekend `weekend_share`, interpolated between the days' middles (no step at midnight)
    days = np.arange(offset // day - 1, (offset + minutes) // day + 2)
    per_day = np.where(days % 7 >= 5, d["weekend_share"], 1.0)
    level *= np.interp(t, days * day + day / 2.0, per_day)
    since = t - offset
    level *= np.exp(d["trend_per_day"] * since / day)
    level *= 1.0 + d["wander_amplitude"] * np.sin(2 * np.pi * since / (d["wander_period_days"] * day) + wander_phase)

    # bursts of spikes: a Poisson number of bursts, each 1 + Poisson(extra) spikes apart by exponential gaps;
    # a spike rises linearly over its ramp and decays exponentially, its height relative to the level at its start
    n_bursts = int(rng.poisson(d["spikes_per_day"] * minutes / day))
    sizes = 1 + rng.poisson(d["burst_extra_spikes"], size=n_bursts)
    n = int(sizes.sum())
    burst_at = np.repeat(rng.uniform(0.0, minutes, size=n_bursts), sizes)
    gaps = rng.exponential(d["burst_gap_minutes"], size=n)
    firsts = np.cumsum(sizes) - sizes  # index of each burst's first spike
    gaps[firsts] = 0.0
    within = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[firsts], sizes)
    starts = np.floor(burst_at + within).astype(np.int64)
    heights = d["spike_height_share"] * rng.lognormal(0.0, 0.7, size=n)
    ramps = rng.exponential(d["spike_ramp_minutes"], size=n) if d["spike_ramp_minutes"] > 0 else np.zeros(n)
    taus = d["spike_length_minutes"] * rng.lognormal(0.0, 0.7, size=n)
    keep = starts < minutes
    starts, heights, ramps, taus = starts[keep], heights[keep], ramps[keep], taus[keep]
    span = np.minimum(np.ceil(ramps + 6.0 * taus).astype(np.int64) + 1, minutes - starts)
    extra = np.zeros(minutes)
    if span.size:
        k = np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)  # minute within each spike
        ramp, tau = np.repeat(ramps, span), np.repeat(taus, span)
        rise = np.where(ramp > 0, (k + 1.0) / np.maximum(ramp, 1e-9), 1.0)
        shape_k = np.where(k < ramp, np.minimum(rise, 1.0), np.exp(-(k - ramp) / tau))
        height = np.repeat(heights * level[starts], span)
        np.add.at(extra, np.repeat(starts, span) + k, height * shape_k)
    mean = level + extra
    mean *= d["peak_tpm"] / float(mean.max())
    rate = mean * _heavy_noise(rng, minutes, d["noise_share"], d["noise_tail_df"])
    load = rng.poisson(rate).astype(np.float64) if p.count_noise else np.floor(rate)
    d.update(start_offset_minutes=offset, bursts=n_bursts, spikes=int(starts.size))
    return np.minimum(load, max_load_tpm), int(SYNTHETIC_START.timestamp() // 60) + offset, d


def trace_episode(
    rng: np.random.Generator, load: Load, minutes: int, params: TraceWindowParams | None = None
) -> tuple[np.ndarray, int, dict]:
    """A random window of `load` for one training episode (`TraceWindowParams`): time-stretched, rescaled to a
    drawn peak, extra noise, calendar shifted. Returns (load, epoch minute of its first value, what was drawn,
    including the window's first trace minute and how many trace minutes it covers)."""
    p = params or TraceWindowParams()
    stretch = _draw(rng, p, "stretch", True)
    if minutes > 1:  # a trace too short for the drawn stretch plays as fast as it must to fit
        stretch = min(stretch, (load.minutes - 1) / (minutes - 1))
    covered = int(math.floor((minutes - 1) * stretch)) + 1
    if covered > load.minutes or stretch <= 0:
        raise ValueError(f"{load.name} has {load.minutes} minutes, fewer than the {minutes} asked for")
    first = int(rng.integers(0, load.minutes - covered + 1))
    x = first + np.arange(minutes) * stretch
    window = np.interp(x, np.arange(load.minutes, dtype=np.float64), load.load_tpm)
    peak = _draw(rng, p, "peak_tpm", True)
    top = float(window.max())
    window = window * (peak / top) if top > 0 else window
    sd = _draw(rng, p, "noise_share", False)
    window = window * np.maximum(rng.normal(1.0, sd, size=minutes), 0.0) if sd > 0 else window
    window = rng.poisson(window).astype(np.float64) if p.count_noise else np.floor(window)
    shift = int(rng.integers(-p.shift_minutes, p.shift_minutes + 1))
    drawn = {"trace": load.name, "first": first, "covered_minutes": covered, "stretch": stretch}
    drawn.update(peak_tpm=peak, noise_share=sd, shift_minutes=shift)
    return window, load.start_minute() + first + shift, drawn
