"""What the status page shows, kept in memory: per group a day of minutes and its last decisions.

`StatusBoard.record` is called once per tick with the tick's journal rows (one per group, in the daemon's group
order), the policies' forecasts and the shadows' desired capacities. Per group it keeps a ring of the last
`MINUTES` tick minutes as numpy arrays (load, active, warming, desired; the forecast and each shadow's desired
only where there are any) and the last `DECISIONS` decisions as compact tuples, so a page is rendered from
memory (no SQLite query) and a day of 100 groups takes about 3 MB.

The page (`/`), its JSON twin (`/api/groups`) and their query handling are `controller.status_page`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetpilot.controller.journal import JournalRow

#: Minutes of history kept per group (a day).
MINUTES = 1440
#: Decisions kept per group.
DECISIONS = 50
_NO = -1  # a missing machine count in the int32 rings

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
    tick records, the HTTP server's threads read."""

    def __init__(
        self,
        groups: Sequence[GroupInfo],
        *,
        dry_run: bool = False,
        clock: str = "wall",
        interval_seconds: float = 60.0,
        minutes: int = MINUTES,
        decisions: int = DECISIONS,
    ):
        self.groups = list(groups)
        self.index = {g.name: i for i, g in enumerate(self.groups)}
        self.dry_run, self.clock, self.interval_seconds = dry_run, clock, interval_seconds
        self.size = int(minutes)
        n = len(self.groups)
        self.load = np.full((n, self.size), np.nan, dtype=np.float32)
        self.active = np.full((n, self.size), _NO, dtype=np.int32)
        self.warming = np.full((n, self.size), _NO, dtype=np.int32)
        self.desired = np.full((n, self.size), _NO, dtype=np.int32)
        self.forecast: np.ndarray | None = None  #: (n, size) float32 once any policy forecasts
        #: per group with shadows: (shadows, size) int32 of each shadow's desired capacity
        self.shadow: dict[int, np.ndarray] = {
            i: np.full((len(g.shadow_policies), self.size), _NO, dtype=np.int32)
            for i, g in enumerate(self.groups)
            if g.shadow_policies
        }
        self.decisions: list[deque[tuple]] = [deque(maxlen=decisions) for _ in self.groups]
        self.last_minute: int | None = None
        self.ticks = 0
        self.forecast_shift = np.array([g.warmup_minutes for g in self.groups], dtype=np.int64)
        self.economics: Any = None  #: a controller.shadow.ShadowBook, when groups have shadows
        self._strings: dict[Any, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def of_daemon(cls, cfg, groups) -> StatusBoard:
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
        )

    def _intern(self, v: Any) -> Any:
        """One shared object per distinct string or guard tuple (thousands of decisions repeat a few)."""
        return self._strings.setdefault(v, v)

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
        load = np.array([np.nan if r.load_tpm is None else r.load_tpm for r in rows], dtype=np.float32)
        active = np.array([_NO if r.active is None else r.active for r in rows], dtype=np.int64)
        warming = np.array([_NO if r.warming is None else r.warming for r in rows], dtype=np.int64)
        desired = np.array([_NO if r.final is None else r.final for r in rows], dtype=np.int64)
        kept = []
        intern = self._intern
        for i, r in enumerate(rows):
            sh = shadows.get(i)
            kept.append(
                (
                    minute,
                    intern(r.wall_time),
                    r.load_tpm,
                    intern(r.data_status),
                    intern(r.action),
                    r.active,
                    r.warming,
                    r.desired_before,
                    r.raw_action,
                    r.policy_desired,
                    r.fallback_desired,
                    intern(tuple(r.guards)),
                    r.final,
                    intern(r.outcome),
                    intern(sh) if sh else (),
                )
            )
        with self._lock:
            slot = self._advance(minute)
            if slot is None:
                return
            self.load[:, slot] = load
            self.active[:, slot] = np.clip(active, _NO, 2**31 - 1)
            self.warming[:, slot] = np.clip(warming, _NO, 2**31 - 1)
            self.desired[:, slot] = np.clip(desired, _NO, 2**31 - 1)
            if forecast is not None and np.isfinite(forecast).any():
                if self.forecast is None:
                    self.forecast = np.full(self.load.shape, np.nan, dtype=np.float32)
            if self.forecast is not None:
                self.forecast[:, slot] = np.nan if forecast is None else forecast
            for i, ring in self.shadow.items():
                got = shadows.get(i, ())
                ring[:, slot] = [_NO if v is None else v for v in got] if got else _NO
            for d, t in zip(self.decisions, kept, strict=True):
                d.append(t)
            self.ticks += 1

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
        self.load[:, slots] = np.nan
        for a in (self.active, self.warming, self.desired, *self.shadow.values()):
            a[:, slots] = _NO
        if self.forecast is not None:
            self.forecast[:, slots] = np.nan

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

            def oldest_first(a: np.ndarray) -> np.ndarray:
                part = a if every else a[idx]
                return np.concatenate([part[:, start:], part[:, :start]], axis=1)

            series = {
                "load_tpm": oldest_first(self.load),
                "active": _machines(oldest_first(self.active)),
                "warming": _machines(oldest_first(self.warming)),
                "desired": _machines(oldest_first(self.desired)),
            }
            if self.forecast is not None:
                series["forecast_tpm"] = oldest_first(self.forecast)
            shadows = {
                int(i): _machines(
                    np.concatenate([self.shadow[int(i)][:, start:], self.shadow[int(i)][:, :start]], axis=1)
                )
                for i in idx
                if int(i) in self.shadow
            }
            kept = [self.decisions[int(i)] for i in idx]
            decided = [list(d)[-decisions:] if decisions < len(d) else list(d) for d in kept]
            ticks = self.ticks
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

    def nbytes(self) -> int:
        """Bytes held by the rings (the decisions not counted)."""
        arrays = [self.load, self.active, self.warming, self.desired, *self.shadow.values()]
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
