"""Load: the seed's synthetic generator and replay of per-minute trace CSVs.

A load is a float64 array of transactions per minute, one entry per minute, with the UTC time of its first
minute. All randomness comes from the `numpy.random.Generator` passed in (the env's `np_random`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from fleetpilot.training.params import SyntheticLoadParams

#: Synthetic loads have no calendar; they start on this Monday, 00:00 UTC (their daily phase is random anyway).
SYNTHETIC_START = datetime(2026, 1, 5, tzinfo=UTC)


class TraceError(ValueError):
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
    cyclic *= rng.normal(1.0, noise, size=minutes)

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
    load = np.floor(np.clip(cyclic + spikes, 0.0, max_load_tpm))
    return load


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
        raw = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise TraceError(f"{name}:{line}: not UTF-8 text") from None
    times: list[int] = []
    values: list[float] = []
    fh = io.StringIO(text, newline="")
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise TraceError(f"{name}:1: empty file, expected a header 'timestamp,requests'") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise TraceError(f"{name}:1: not a text CSV ({exc.__class__.__name__})") from None
        cols = [h.strip().lower() for h in header]
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
                try:
                    ts = _parse_time(row[it])
                except ValueError:
                    raise TraceError(f"{name}:{line}: timestamp {row[it].strip()!r} is not ISO-8601") from None
                if ts.second or ts.microsecond:
                    raise TraceError(f"{name}:{line}: timestamp {row[it].strip()!r} is not the start of a minute")
                try:
                    v = float(row[ir])
                except ValueError:
                    raise TraceError(f"{name}:{line}: requests {row[ir].strip()!r} is not a number") from None
                if not math.isfinite(v):
                    raise TraceError(f"{name}:{line}: requests {row[ir].strip()!r} is not finite")
                if v < 0:
                    raise TraceError(f"{name}:{line}: requests {row[ir].strip()!r} is negative")
                m = int(ts.timestamp() // 60)
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
    series = np.asarray(values, dtype=np.float64)
    if t[-1] - t[0] + 1 != t.size:  # only reachable with fill_gaps
        full = np.arange(t[0], t[-1] + 1)
        series = np.interp(full, t, series)
    start = datetime.fromtimestamp(int(t[0]) * 60, tz=UTC)
    return Load(path.stem, series, start)


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
