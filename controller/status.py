"""What the status page shows, kept in memory: per group a day of minutes and its last decisions.

`StatusBoard.record` is called once per tick with the tick's journal rows (one per group, in the daemon's group
order), the policies' forecasts and the shadows' desired capacities. Per group it keeps a ring of the last
`MINUTES` tick minutes as numpy arrays (load, active, warming, desired; the forecast and each shadow's desired
only where there are any) and the last `DECISIONS` decisions as compact tuples, so a page is rendered from
the board (no SQLite query); a day of 100 groups takes about 3 MB.

The rings are minute-major (one row per minute, one column per group: a tick writes a row of each) in
`policies.rowstore.RowStore`s: in memory, or with `directory` (the daemon's state directory) in unnamed files
whose pages the process releases after each tick and each read, so a day of 10,000 groups (about 230 MB of
rings) stays in the file and the page cache, not in the daemon's resident memory. Nothing survives a restart
(the page starts empty, as without files).

The page (`/`), its JSON twin (`/api/groups`) and their query handling are `controller.status_page`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleetpilot.controller.journal import JournalRow
from fleetpilot.policies.rowstore import RowStore

#: Minutes of history kept per group (a day).
MINUTES = 1440
#: Decisions kept per group.
DECISIONS = 50
_NO = -1  # a missing machine count in the int32 rings
_NONE = np.iinfo(np.int64).min  # a missing integer of a kept decision
#: Integer fields of a kept decision, in the order of the tuple they are read back into (see DECISION_FIELDS).
_INT_FIELDS = ("active", "warming", "desired_before", "raw_action", "policy_desired", "fallback_desired", "final")
_I_ACTIVE, _I_WARMING, _I_FINAL = 0, 1, 6
_CODE_FIELDS = ("data_status", "action", "guards", "outcome")

#: The fields of a kept decision, in order (the JSON twin's keys).
DECISION_FIELDS = (
    "minute",
    "wall_time",
    "load_tpm",
    "data_status",
    "action",
    "active",
    "warming",
    "desired_before",
    "raw_action",
    "policy_desired",
    "fallback_desired",
    "guards",
    "final",
    "outcome",
    "shadows",
)


@dataclass(frozen=True)
class GroupInfo:
    """What the page says about a group that does not change while the daemon runs."""

    name: str
    policy: str
    fallback_policy: str
    paused: bool
    min_machines: int
    max_machines: int
    capacity_tpm_per_machine: float
    warmup_minutes: int
    source: str
    backend: str
    shadow_policies: tuple[str, ...] = ()


class StatusBoard:
    """Per group: a ring of the last `minutes` tick minutes and the last `decisions` decisions. Thread-safe: the
    tick records, the HTTP server's threads read. `directory`: where the rings live in files (module
    docstring); None: in memory."""

    def __init__(
        self,
        groups: Sequence[GroupInfo],
        *,
        dry_run: bool = False,
        clock: str = "wall",
        interval_seconds: float = 60.0,
        minutes: int = MINUTES,
        decisions: int = DECISIONS,
        directory: Path | None = None,
    ):
        self.groups = list(groups)
        self.index = {g.name: i for i, g in enumerate(self.groups)}
        self.dry_run, self.clock, self.interval_seconds = dry_run, clock, interval_seconds
        self.size = int(minutes)
        self.directory = directory
        n = len(self.groups)
        self._stores: list[RowStore] = []
        self.load = self._ring(self.size, n, np.float32, np.nan)  #: (size, n): row = minute % size
        self.active = self._ring(self.size, n, np.int32, _NO)
        self.warming = self._ring(self.size, n, np.int32, _NO)
        self.desired = self._ring(self.size, n, np.int32, _NO)
        self.forecast: np.ndarray | None = None  #: (size, n) float32 once any policy forecasts
        #: the shadows' desired capacities, (size, columns) int32: group i's shadows are columns shadow_cols[i]
        self.shadow_cols: dict[int, slice] = {}
        col = 0
        for i, g in enumerate(self.groups):
            if g.shadow_policies:
                self.shadow_cols[i] = slice(col, col + len(g.shadow_policies))
                col += len(g.shadow_policies)
        self.shadow = self._ring(self.size, col, np.int32, _NO)
        # the last `decisions` decisions: every tick writes one per group at the same ring position (a row)
        self.keep = int(decisions)
        k = self.keep
        self.d_minute = np.zeros(k, dtype=np.int64)
        self.d_wall: list[str] = [""] * k
        self.d_load = self._ring(k, n, np.float64, np.nan)  #: (keep, n)
        self.d_ints = self._ring(k * len(_INT_FIELDS), n, np.int64, _NONE).reshape(k, len(_INT_FIELDS), n)
        self.d_codes = self._ring(k * len(_CODE_FIELDS), n, np.int32, 0).reshape(k, len(_CODE_FIELDS), n)
        width = max((len(g.shadow_policies) for g in self.groups), default=0)
        self.d_shadows = self._ring(k * width, n, np.int64, _NONE).reshape(k, width, n)
        self.d_count = 0
        self._codes: dict[Any, int] = {}  #: interned strings and guard tuples -> code
        self._values: list[Any] = []
        self.last_minute: int | None = None
        self.ticks = 0
        self.forecast_shift = np.array([g.warmup_minutes for g in self.groups], dtype=np.int64)
        self.economics: Any = None  #: a controller.shadow.ShadowBook, when groups have shadows
        self._strings: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def _ring(self, rows: int, n: int, dtype: type, fill: float | int) -> np.ndarray:
        store = RowStore(rows, n, dtype, fill, directory=self.directory)
        self._stores.append(store)
        return store.array

    def _release(self) -> None:
        """Release the files' pages (module docstring; a no-op in memory)."""
        for s in self._stores:
            s.release()

    def resident_bytes(self) -> int:
        """Bytes of the rings and kept decisions resident in this process (in files: their mapped pages)."""
        return sum(s.resident_bytes() for s in self._stores)

    @classmethod
    def of_daemon(cls, cfg, groups, directory: Path | None = None) -> StatusBoard:
        """The board of a daemon's config and groups (controller.runtime.GroupRuntime)."""
        return cls(
            [
                GroupInfo(
                    name=g.name,
                    policy=g.cfg.policy,
                    fallback_policy=g.cfg.fallback_policy,
                    paused=g.cfg.paused,
                    min_machines=g.cfg.min_machines,
                    max_machines=g.cfg.max_machines,
                    capacity_tpm_per_machine=g.cfg.capacity_tpm_per_machine,
                    warmup_minutes=g.cfg.warmup_minutes,
                    source=g.cfg.source.kind,
                    backend=g.cfg.backend.kind,
                    shadow_policies=tuple(g.cfg.shadow_policies),
                )
                for g in groups
            ],
            dry_run=cfg.dry_run,
            clock="simulated" if cfg.simulated_clock else "wall",
            interval_seconds=cfg.interval_seconds,
            directory=directory,
        )

    def _code(self, v: Any) -> int:
        """A small number per distinct status, action, outcome or tuple of guard reasons (a few dozen)."""
        c = self._codes.get(v)
        if c is None:
            c = self._codes[v] = len(self._values)
            self._values.append(v)
        return c

    # --- the tick ------------------------------------------------------------------------------------------
    def record(
        self,
        minute: int,
        rows: Sequence[JournalRow],
        forecast: np.ndarray | None = None,
        shadows: dict[int, tuple[int | None, ...]] | None = None,
    ) -> None:
        """One tick: `rows[i]` is group i's journal row (a tick writes one per group), `forecast` (N,) the load
        forecast one warm-up ahead (NaN: none), `shadows` group index -> each shadow's desired capacity."""
        if len(rows) != len(self.groups):
            raise ValueError(f"{len(rows)} rows for {len(self.groups)} groups")
        shadows = shadows or {}
        load = np.array([np.nan if r.load_tpm is None else r.load_tpm for r in rows], dtype=np.float64)
        ints = np.array(
            [[_NONE if (v := getattr(r, f)) is None else v for r in rows] for f in _INT_FIELDS], dtype=np.int64
        ).reshape(len(_INT_FIELDS), len(rows))
        code = self._code
        codes = np.array(
            [
                [code(r.data_status) for r in rows],
                [code(r.action) for r in rows],
                [code(tuple(r.guards)) for r in rows],
                [code(r.outcome) for r in rows],
            ],
            dtype=np.int32,
        ).reshape(len(_CODE_FIELDS), len(rows))
        active, warming, desired = ints[_I_ACTIVE], ints[_I_WARMING], ints[_I_FINAL]
        with self._lock:
            slot = self._advance(minute)
            self.load[slot] = load
            self.active[slot] = np.clip(np.where(active == _NONE, _NO, active), _NO, 2**31 - 1)
            self.warming[slot] = np.clip(np.where(warming == _NONE, _NO, warming), _NO, 2**31 - 1)
            self.desired[slot] = np.clip(np.where(desired == _NONE, _NO, desired), _NO, 2**31 - 1)
            if forecast is not None and np.isfinite(forecast).any():
                if self.forecast is None:
                    self.forecast = self._ring(self.size, len(self.groups), np.float32, np.nan)
            if self.forecast is not None:
                self.forecast[slot] = np.nan if forecast is None else forecast
            if self.shadow_cols:
                row = self.shadow[slot]
                row[:] = _NO
                for i, cols in self.shadow_cols.items():
                    got = shadows.get(i, ())
                    if got:
                        row[cols] = [_NO if v is None else v for v in got]
            pos = self.d_count % self.keep
            self.d_minute[pos] = minute
            self.d_wall[pos] = rows[0].wall_time if rows else ""
            self.d_load[pos] = load
            self.d_ints[pos] = ints
            self.d_codes[pos] = codes
            if self.d_shadows.shape[1]:
                self.d_shadows[pos] = _NONE
                for i, got in shadows.items():
                    self.d_shadows[pos, : len(got), i] = [_NONE if v is None else v for v in got]
            self.d_count += 1
            self.ticks += 1
            self._release()

    def _advance(self, minute: int) -> int | None:
        """The ring slot of `minute`, clearing the slots of minutes skipped since the last one. A minute before
        the last one (the clock went back) restarts the rings."""
        last = self.last_minute
        if last is not None and minute < last:
            self._clear(range(self.size))
            last = None
        if last is not None and minute - last > 1:
            self._clear(range(last + 1, min(minute, last + 1 + self.size)))
        self.last_minute = minute
        return minute % self.size

    def _clear(self, minutes: range) -> None:
        slots = np.array([m % self.size for m in minutes], dtype=np.int64)
        if slots.size == 0:
            return
        self.load[slots] = np.nan
        for a in (self.active, self.warming, self.desired, self.shadow):
            a[slots] = _NO
        if self.forecast is not None:
            self.forecast[slots] = np.nan

    # --- reading -------------------------------------------------------------------------------------------
    def snapshot(self, rows: Sequence[int], step: int, decisions: int = DECISIONS) -> dict[str, Any]:
        """The series of groups `rows` (oldest minute first, `step`-minute means, NaN where nothing was recorded)
        and their last `decisions` decisions (oldest first), copied under the lock."""
        with self._lock:
            last = self.last_minute
            if last is None:
                return {
                    "last_minute": None,
                    "series": None,
                    "shadow_series": {},
                    "decisions": [[] for _ in rows],
                    "ticks": self.ticks,
                }
            start = (last + 1) % self.size
            idx = np.asarray(rows, dtype=np.int64)
            every = len(idx) == len(self.groups) and bool((idx == np.arange(len(idx))).all())

            def oldest_first(a: np.ndarray, cols: Any = None) -> np.ndarray:
                """(columns, size) of the (size, columns) ring `a`, oldest minute first."""
                part = a[:, cols] if cols is not None else a if every else a[:, idx]
                return np.concatenate([part[start:], part[:start]], axis=0).T

            series = {
                "load_tpm": oldest_first(self.load),
                "active": _machines(oldest_first(self.active)),
                "warming": _machines(oldest_first(self.warming)),
                "desired": _machines(oldest_first(self.desired)),
            }
            if self.forecast is not None:
                series["forecast_tpm"] = oldest_first(self.forecast)
            shadows = {
                int(i): _machines(oldest_first(self.shadow, self.shadow_cols[int(i)]))
                for i in idx
                if int(i) in self.shadow_cols
            }
            decided = [self._decisions(int(i), decisions) for i in idx]
            ticks = self.ticks
            self._release()
        out = {k: _bucket_mean(v, step) for k, v in series.items()}
        return {
            "last_minute": last,
            "start_minute": last - self.size + 1,
            "step": step,
            "series": out,
            "shadow_series": {i: _bucket_mean(v, step) for i, v in shadows.items()},
            "decisions": decided,
            "ticks": ticks,
        }

    def decisions_of(self, i: int, last: int = DECISIONS) -> list[tuple]:
        """Group i's last `last` decisions as tuples of DECISION_FIELDS, oldest first."""
        with self._lock:
            out = self._decisions(i, last)
            self._release()
            return out

    def _decisions(self, i: int, last: int) -> list[tuple]:
        """Group i's last `last` decisions as tuples of DECISION_FIELDS, oldest first (under the lock)."""
        n = min(last, self.d_count, self.keep)
        out = []
        values = self._values
        width = len(self.groups[i].shadow_policies)
        for back in range(n, 0, -1):
            pos = (self.d_count - back) % self.keep
            iv = [None if v == _NONE else v for v in self.d_ints[pos, :, i].tolist()]
            cv = [values[c] for c in self.d_codes[pos, :, i].tolist()]
            load = float(self.d_load[pos, i])
            sh = tuple(None if v == _NONE else v for v in self.d_shadows[pos, :width, i].tolist())
            out.append(
                (
                    int(self.d_minute[pos]),
                    self.d_wall[pos],
                    None if load != load else load,
                    cv[0],
                    cv[1],
                    iv[0],
                    iv[1],
                    iv[2],
                    iv[3],
                    iv[4],
                    iv[5],
                    cv[2],
                    iv[6],
                    cv[3],
                    sh if width else (),
                )
            )
        return out

    def nbytes(self) -> int:
        """Bytes held by the rings and the kept decisions' arrays (in memory or in files)."""
        arrays = [self.load, self.active, self.warming, self.desired, self.shadow]
        arrays += [self.d_minute, self.d_load, self.d_ints, self.d_codes, self.d_shadows]
        if self.forecast is not None:
            arrays.append(self.forecast)
        return int(sum(a.nbytes for a in arrays))


def _machines(a: np.ndarray) -> np.ndarray:
    out = a.astype(np.float32)
    out[a == _NO] = np.nan
    return out


def _bucket_mean(a: np.ndarray, step: int) -> np.ndarray:
    """Means over `step` consecutive minutes (the last bucket ends at the last minute), NaN ignored."""
    if step <= 1:
        return a
    n, m = a.shape
    pad = (-m) % step
    if pad:
        a = np.concatenate([np.full((n, pad), np.nan, dtype=a.dtype), a], axis=1)
    b = a.reshape(n, -1, step)
    ok = ~np.isnan(b)
    cnt = ok.sum(axis=2)
    s = np.where(ok, b, 0.0).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)


def forecasts(observed: Sequence[tuple[Any, Any]], n: int) -> np.ndarray | None:
    """(n,) each group's load forecast one warm-up ahead, from the policies that make one (a `forecast_tpm(obs)`
    method, as the `predictive` rule has); NaN elsewhere; None when no policy forecasts. `observed`: the
    tick's (batch, observation) pairs. A failing forecast is left out (it is only shown)."""
    out: np.ndarray | None = None
    for batch, obs in observed:
        f = getattr(batch.policy, "forecast_tpm", None)
        if not callable(f):
            continue
        try:
            values = np.asarray(f(obs), dtype=np.float64)
        except Exception:  # the page shows no forecast for that batch
            continue
        if values.shape != (len(batch.groups),):
            continue
        if out is None:
            out = np.full(n, np.nan)
        out[[g.index for g in batch.groups]] = values
    return out
