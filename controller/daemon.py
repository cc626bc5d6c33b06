"""The daemon: every tick read the load, build the observation, decide, guard, write, journal, export.

One tick, for every group (see ../shared/DESIGN.md, "One path for data"):

1. read the source's last complete minute; classify it: ok | error | empty | nan | invalid | stale;
2. simulated groups step their world to now (with that load); read the backend (active, warming, desired);
3. per batch of groups sharing a policy (spec, parameters and warm-up): feed the good readings to the one
   observation builder, make one batched `decide`, and ask the fallback rule for the groups that need it;
4. per group: the pure guard chain (`controller.guards.decide`), the write (the ONE place that checks
   dry-run), a journal row, metrics, and in simulated mode a one-line summary on stdout.

With simulator/CSV sources the daemon runs on a simulated clock: tick k is simulated minute k (it observes
minute k of the load; minute 0 at the first tick, without stepping), whatever `interval_seconds` is. With
real sources, ticks run on the wall clock, aligned to the minute, and history is backfilled at start so a
restarted daemon sees the same observations as one that never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry

from fleetpilot.controller import guards
from fleetpilot.controller.backends.base import Backend, BackendError, GroupState
from fleetpilot.controller.config import DaemonConfig, GroupConfig, masked_dump
from fleetpilot.controller.journal import Journal, JournalRow
from fleetpilot.controller.metrics import Metrics
from fleetpilot.controller.sources.base import MetricSource, Sample, SourceError
from fleetpilot.policies.base import Policy
from fleetpilot.policies.observation import HISTORY_MINUTES, ObservationBuilder

log = logging.getLogger("fleetpilot.daemon")
DRY_RUN_MARKER = "DRY-RUN: would set desired capacity"
#: Most minutes a simulated group catches up in one tick after a pause (wall-clock mode).
_MAX_CATCH_UP_MINUTES = 60
#: The wall clock moved this many seconds more (or less) than the monotonic clock between two ticks: a jump
#: (an NTP step, a manual change, a suspended VM), not drift (NTP slews at most 0.5 ms per second).
CLOCK_JUMP_SECONDS = 30.0


# --- clocks ------------------------------------------------------------------------------------------------
class Clock(Protocol):
    def now_seconds(self) -> float:
        """Seconds since the Unix epoch, of the daemon's world."""

    def advance(self) -> None:
        """Move to the next tick (a no-op for the wall clock)."""


class WallClock:
    simulated = False

    def now_seconds(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        """Seconds of a clock that never jumps (clocks with this method get wall-clock jump detection)."""
        return time.monotonic()

    def advance(self) -> None:
        pass


class SimulatedClock:
    """Tick k is at the start of minute `start_minute + 1 + k`: its last complete minute is minute k."""

    simulated = True

    def __init__(self, start_minute: int):
        self.minute = int(start_minute) + 1

    def now_seconds(self) -> float:
        return self.minute * 60.0

    def advance(self) -> None:
        self.minute += 1


class Streaks:
    """Log a fault once when its streak starts (or changes kind) and once when it ends, never every tick.

    `bad(key, kind, msg, ...)` each tick the fault is there; `good(key, msg, ...)` each tick it is not. The
    first bad tick of a streak logs `msg` at `level`; later ticks of the same kind log at DEBUG; the first good
    tick after a streak logs the recovery at INFO with the number of bad ticks. Metrics count every tick.
    """

    def __init__(self, logger: logging.Logger):
        self.log = logger
        self.open: dict[tuple, list] = {}  #: key -> [kind, ticks]

    def bad(
        self, key: tuple, kind: str, msg: str, level: int = logging.WARNING, exc_info: bool = False, **extra: Any
    ) -> None:
        cur = self.open.get(key)
        if cur is not None and cur[0] == kind:
            cur[1] += 1
            self.log.debug(msg, extra={**extra, "streak_ticks": cur[1]})
            return
        self.open[key] = [kind, 1]
        self.log.log(
            level,
            msg,
            extra={**extra, "streak": "started; logged again only when it changes or ends"},
            exc_info=exc_info,
        )

    def good(self, key: tuple, msg: str, **extra: Any) -> None:
        cur = self.open.pop(key, None)
        if cur is not None:
            self.log.info(msg, extra={**extra, "kind": cur[0], "bad_ticks": cur[1]})


# --- per-group and per-batch state ------------------------------------------------------------------------
@dataclass
class GroupRuntime:
    cfg: GroupConfig
    source: MetricSource
    backend: Backend
    limits: guards.Limits
    memory: guards.Memory = field(default_factory=guards.Memory)
    batch: Batch | None = None
    row: int = -1
    # this tick
    sample: Sample | None = None
    status: str = guards.DATA_OK
    state: GroupState | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.cfg.name


def limits_of(g: GroupConfig) -> guards.Limits:
    return guards.Limits(
        min_machines=g.min_machines,
        max_machines=g.max_machines,
        max_scale_out_per_tick=g.max_scale_out_per_tick,
        max_scale_in_per_tick=g.max_scale_in_per_tick,
        scale_in_stabilization_minutes=g.scale_in_stabilization_minutes,
        block_scale_in_while_warming=g.block_scale_in_while_warming,
        bad_data_ticks_before_fallback=g.bad_data_ticks_before_fallback,
        paused=g.paused,
        max_load_tpm=g.load_ceiling_tpm,
    )


def _params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


@dataclass
class Batch:
    """Groups decided by one batched call: same policy spec, parameters and warm-up."""

    spec: str
    params: dict[str, Any]
    warmup_minutes: int
    groups: list[GroupRuntime]
    policy: Policy | None = None
    policy_error: str | None = None
    builder: ObservationBuilder | None = None
    fallbacks: dict[str, Policy] = field(default_factory=dict)  #: by fallback key

    def build(self) -> None:
        caps = np.array([g.cfg.capacity_tpm_per_machine for g in self.groups], dtype=np.float64)
        self.builder = ObservationBuilder(len(self.groups), caps, self.warmup_minutes)
        from fleetpilot.policies.registry import make_policy

        for g in self.groups:
            key = fallback_key(g.cfg)
            if key not in self.fallbacks:
                self.fallbacks[key] = make_policy(g.cfg.fallback_policy, g.cfg.fallback_policy_params)
                self.fallbacks[key].reset(len(self.groups))


def fallback_key(g: GroupConfig) -> str:
    return f"{g.fallback_policy} {_params_key(g.fallback_policy_params)}"


def load_policy(spec: str, params: dict[str, Any]) -> tuple[Policy | None, str | None]:
    """The policy of a batch. `default` before the shipped model exists is the one tolerated failure: its groups
    run on their fallback rule (logged, counted as fallbacks with cause `model_unavailable`). Any other policy
    that cannot be made is a user error (PolicyError/ModelError: one line, exit 2)."""
    from pathlib import Path

    from fleetpilot.policies.registry import RULES, PolicyError, make_policy, shipped_models

    if spec not in RULES and spec != "default" and spec not in shipped_models() and not Path(spec).exists():
        # a model path that is not there: never let the registry fall back to its parent directory
        raise PolicyError(f"policy {spec}: no such model directory")
    if spec == "default" and "default" not in shipped_models():
        try:
            return make_policy(spec, params or None), None
        except PolicyError as exc:
            return None, str(exc)
    return make_policy(spec, params or None), None


def _made(factory, g: GroupConfig, i: int, part: str):
    """A source or backend, or a ConfigError naming the group's field (e.g. a trace that cannot be read)."""
    from fleetpilot.controller.config import ConfigError

    try:
        return factory(g)
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        kind = getattr(g, part).kind
        raise ConfigError(f"groups[{i}].{part} ({kind}): cannot be set up: {str(exc).splitlines()[0]}") from None


# --- the daemon --------------------------------------------------------------------------------------------
class Daemon:
    def __init__(
        self,
        cfg: DaemonConfig,
        registry: CollectorRegistry | None = None,
        *,
        sources: list[MetricSource] | None = None,
        backends: list[Backend] | None = None,
        clock: Clock | None = None,
        dry_run: bool | None = None,
        summary: bool = False,
        journal: Journal | None = None,
        out=None,
    ):
        from fleetpilot.controller.factory import make_backend, make_source

        self.cfg = cfg
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, process=registry is None)
        self.dry_run = cfg.dry_run if dry_run is None else bool(dry_run)
        self.summary = summary
        self.out = out or sys.stdout
        srcs = (
            sources if sources is not None else [_made(make_source, g, i, "source") for i, g in enumerate(cfg.groups)]
        )
        bks = (
            backends
            if backends is not None
            else [_made(make_backend, g, i, "backend") for i, g in enumerate(cfg.groups)]
        )
        self.groups = [GroupRuntime(g, s, b, limits_of(g)) for g, s, b in zip(cfg.groups, srcs, bks, strict=False)]
        self.clock = clock or self._default_clock()
        self.journal = journal if journal is not None else Journal(cfg.journal_path)
        self.journal.on_error = lambda kind: self.metrics.journal_errors.labels(kind).inc()
        self.batches = self._make_batches()
        self.tick_no = 0
        self.backfilled = False
        self.started_at = time.monotonic()
        self.ready_since: float | None = None
        self.last_tick_end: float | None = None
        self.last_outcome: str | None = None
        self._tick_lock = threading.Lock()
        self.streaks = Streaks(log)
        self._last_clock: tuple[float, float] | None = None  #: (wall, monotonic) seconds at the last tick
        real = [g for g in self.groups if not g.cfg.simulated_clock]
        self._pool = (
            ThreadPoolExecutor(max_workers=min(16, len(real)), thread_name_prefix="fleetpilot-read")
            if len(real) > 1
            else None
        )
        for g in self.groups:
            self.metrics.init_group(g.name)

    def _default_clock(self) -> Clock:
        if not self.cfg.simulated_clock:
            return WallClock()
        # All groups replay in lockstep from the first group's natural start (synthetic: a Monday 00:00 UTC;
        # CSV: the trace's first timestamp); the other replays are re-timed to start there too.
        start = int(self.groups[0].source.start_minute)
        for g in self.groups:
            g.source.start_minute = start
        return SimulatedClock(start)

    def _make_batches(self) -> list[Batch]:
        by_key: dict[tuple, Batch] = {}
        for g in self.groups:
            key = (g.cfg.policy, _params_key(g.cfg.policy_params), g.cfg.warmup_minutes)
            if key not in by_key:
                by_key[key] = Batch(g.cfg.policy, dict(g.cfg.policy_params), g.cfg.warmup_minutes, [])
            b = by_key[key]
            g.batch, g.row = b, len(b.groups)
            b.groups.append(g)
        batches = list(by_key.values())
        for b in batches:
            b.build()
            b.policy, b.policy_error = load_policy(b.spec, b.params)
            names = [g.name for g in b.groups]
            if b.policy is None:
                log.error(
                    "policy cannot be loaded; its groups run on their fallback rule",
                    extra={
                        "policy": b.spec,
                        "error": b.policy_error,
                        "groups": names[:20],
                        "fallback": sorted({g.cfg.fallback_policy for g in b.groups}),
                    },
                )
            else:
                b.policy.reset(len(b.groups))
                providers = getattr(b.policy, "providers", None)
                log.info(
                    "policy loaded",
                    extra={
                        "policy": b.spec,
                        "kind": type(b.policy).__name__,
                        "providers": providers,
                        "groups": len(names),
                    },
                )
        return batches

    # --- start -------------------------------------------------------------------------------------------
    def backfill(self) -> None:
        """Feed each batch's builder the last HISTORY_MINUTES of load from the sources, oldest first; then
        restore the scale-in stabilization windows from the journal."""
        now_minute = int(self.clock.now_seconds() // 60)
        # the last complete minute (now - 1) is left to the first tick, which reads it with the machines
        start, end = now_minute - HISTORY_MINUTES, now_minute - 1
        total = 0
        for b in self.batches:
            series: list[dict[int, float]] = []
            for g in b.groups:
                got: dict[int, float] = {}
                try:
                    for s in g.source.history(start, end):
                        if guards.usable_load(s.load_tpm, g.limits) and start <= s.minute < end:
                            got[int(s.minute)] = float(s.load_tpm)
                except SourceError as exc:
                    log.warning(
                        "history backfill failed; the group starts without history",
                        extra={"group": g.name, "error": str(exc)},
                    )
                    self.metrics.source_errors.labels(g.name, "error").inc()
                series.append(got)
                total += len(got)
            self._feed_history(b, series)
        for g in self.groups:
            w = g.cfg.scale_in_stabilization_minutes
            if w > 0:
                recs = self.journal.recent_recommendations(g.name, now_minute - w)
                g.memory = guards.Memory(recommendations=tuple(recs))
        self.backfilled = True
        self.ready_since = time.monotonic()
        log.info("history backfilled", extra={"samples": total, "minutes": HISTORY_MINUTES})

    @staticmethod
    def _feed_history(b: Batch, series: list[dict[int, float]]) -> None:
        """Feed (minute -> load) series into the batch's builder, minute by minute, oldest first. A group
        without a sample at a minute is left alone (its gap is later held by the builder)."""
        if not any(series):
            return
        lo = min(min(s) for s in series if s)
        hi = max(max(s) for s in series if s)
        n = len(b.groups)
        mat = np.full((n, hi - lo + 1), np.nan)
        for i, s in enumerate(series):
            if s:
                mat[i, np.fromiter(s.keys(), np.int64, len(s)) - lo] = np.fromiter(s.values(), np.float64, len(s))
        bld = b.builder
        zeros = np.zeros(n, dtype=np.int64)
        present = ~np.isnan(mat)
        for j in range(mat.shape[1]):
            has = present[:, j]
            if has.all():
                bld.update(mat[:, j], zeros, zeros, np.full(n, lo + j))
                continue
            if not has.any():
                continue
            fresh = bld.count == 0
            bld.update(np.where(has, mat[:, j], bld.load), zeros, zeros, np.where(has, lo + j, bld.minute))
            undo = fresh & ~has
            if undo.any():
                bld.reset(np.nonzero(undo)[0])

    # --- one tick ----------------------------------------------------------------------------------------
    def run_tick(self) -> str:
        """One tick that never raises: the outcome is counted and logged."""
        with self._tick_lock:
            t0 = time.perf_counter()
            try:
                outcome = self.tick()
            except Exception as exc:  # a failing tick never kills the daemon
                self.streaks.bad(
                    ("tick",),
                    type(exc).__name__,
                    "tick failed",
                    logging.ERROR,
                    exc_info=True,
                    tick=self.tick_no,
                    error=f"{type(exc).__name__}: {exc}",
                )
                outcome = "error"
                self.tick_no += 1
            else:
                self.streaks.good(("tick",), "ticks complete again", tick=self.tick_no - 1)
            dt = time.perf_counter() - t0
            self.metrics.ticks.labels(outcome).inc()
            self.metrics.tick_duration.observe(dt)
            self.last_outcome = outcome
            if outcome != "error":
                self.last_tick_end = time.monotonic()
                self.metrics.last_tick.set(time.time())
            return outcome

    def tick(self) -> str:
        if self.tick_no > 0:
            self.clock.advance()
        now_s = self.clock.now_seconds()
        now_minute = int(now_s // 60)
        self._check_clock(now_s)
        self._read_sources(now_s, now_minute)
        self._read_backends(now_minute)
        proposals = {}
        for b in self.batches:
            proposals.update(self._decide_batch(b))
        wall = datetime.now(UTC).isoformat(timespec="seconds")
        problems = 0
        for g in self.groups:
            problems += self._finish_group(g, proposals.get(g.name), now_minute, wall)
        self.journal.commit()
        self.tick_no += 1
        return "ok" if problems == 0 else "partial"

    def _check_clock(self, now_s: float) -> None:
        """Detect the wall clock jumping against the monotonic clock between two ticks. A jump is counted and
        logged; the groups' scale-in stabilization windows move with it (they measure real time); readings
        older than the history (after a backward jump) are then `repeat` (held, never a scale-in), and a gap
        after a forward jump is backfilled from the source."""
        mono = getattr(self.clock, "monotonic", None)
        if mono is None:  # the simulated clock (and test clocks) cannot jump
            return
        m = float(mono())
        last, self._last_clock = self._last_clock, (now_s, m)
        if last is None:
            return
        skew = (now_s - last[0]) - (m - last[1])
        if abs(skew) <= CLOCK_JUMP_SECONDS:
            return
        direction = "forward" if skew > 0 else "backward"
        self.metrics.clock_jumps.labels(direction).inc()
        log.warning(
            "wall clock jumped",
            extra={
                "direction": direction,
                "seconds": round(skew, 1),
                "now": datetime.fromtimestamp(now_s, UTC).isoformat(),
            },
        )
        shift = int(round(skew / 60.0))
        if shift:
            for g in self.groups:
                g.memory = guards.Memory(
                    bad_ticks=g.memory.bad_ticks,
                    recommendations=tuple((minute + shift, rec) for minute, rec in g.memory.recommendations),
                )

    def _read_one(self, g: GroupRuntime, now_s: float, now_minute: int) -> None:
        g.sample, g.state, g.error = None, None, None
        try:
            s = g.source.latest(now_minute)
        except SourceError as exc:
            g.status, g.error = "error", str(exc)
            return
        except Exception as exc:  # a source bug is a source error, not a dead tick
            g.status, g.error = "error", f"{type(exc).__name__}: {exc}"
            return
        g.sample = s
        if s is None:
            g.status = "empty"
        elif not math.isfinite(s.load_tpm):
            g.status = "nan"
        elif s.load_tpm < 0:
            g.status = "invalid"
        elif not guards.usable_load(s.load_tpm, g.limits):
            g.status = "implausible"  # beyond any plausible fleet: bad data, never a scale-in
        elif now_s - (s.minute + 1) * 60.0 > g.cfg.stale_after_seconds:
            g.status = "stale"
        elif g.batch is not None and g.batch.builder.count[g.row] > 0 and s.minute < g.batch.builder.minute[g.row]:
            g.status = "repeat"  # older than the history already seen: the clock (or the source) went back
        else:
            g.status = guards.DATA_OK

    def _read_sources(self, now_s: float, now_minute: int) -> None:
        if self._pool is None:
            for g in self.groups:
                self._read_one(g, now_s, now_minute)
        else:
            list(self._pool.map(lambda g: self._read_one(g, now_s, now_minute), self.groups))
        for g in self.groups:
            if g.status != guards.DATA_OK:
                self.metrics.source_errors.labels(g.name, g.status).inc()
                self.streaks.bad(
                    (g.name, "source"),
                    g.status,
                    "bad load reading",
                    group=g.name,
                    status=g.status,
                    error=g.error,
                    sample_minute=getattr(g.sample, "minute", None),
                )
            else:
                self.streaks.good((g.name, "source"), "load reading good again", group=g.name)

    def _read_backends(self, now_minute: int) -> None:
        for g in self.groups:
            advance = getattr(g.backend, "advance_to", None)
            try:
                if advance is not None:  # a simulated world: step to now with the minute's load
                    ok = g.status == guards.DATA_OK and g.sample.minute == now_minute - 1
                    advance(now_minute, g.sample.load_tpm if ok else float("nan"), _MAX_CATCH_UP_MINUTES)
                g.state = g.backend.read()
            except BackendError as exc:
                g.state, g.error = None, str(exc)
                self.metrics.backend_errors.labels(g.name).inc()
                self.streaks.bad((g.name, "backend"), "read", "backend read failed", group=g.name, error=str(exc))

    def _fill_gaps(self, b: Batch) -> None:
        """Minutes missed since a group's last sample (missed ticks, a forward clock jump) are read from the
        source's history rather than filled by holding the last value."""
        bld = b.builder
        series: list[dict[int, float]] = []
        for i, g in enumerate(b.groups):
            got: dict[int, float] = {}
            if g.status == guards.DATA_OK and bld.count[i] > 0 and g.sample.minute - bld.minute[i] > 1:
                start = max(int(bld.minute[i]) + 1, g.sample.minute - HISTORY_MINUTES)
                try:
                    for s in g.source.history(start, g.sample.minute):
                        if guards.usable_load(s.load_tpm, g.limits) and start <= s.minute < g.sample.minute:
                            got[int(s.minute)] = float(s.load_tpm)
                except SourceError as exc:  # the builder then holds the last value over the gap
                    log.info("gap backfill failed", extra={"group": g.name, "error": str(exc)})
            series.append(got)
        self._feed_history(b, series)

    def _decide_batch(self, b: Batch) -> dict[str, tuple]:
        bld = b.builder
        n = len(b.groups)
        if not getattr(self.clock, "simulated", False):
            self._fill_gaps(b)
        good = np.array([g.status == guards.DATA_OK and g.state is not None for g in b.groups])
        load = np.where(good, [g.sample.load_tpm if good[i] else 0.0 for i, g in enumerate(b.groups)], bld.load)
        minute = np.where(good, [g.sample.minute if good[i] else 0 for i, g in enumerate(b.groups)], bld.minute)
        active = np.array([g.state.active if g.state else bld.active[i] for i, g in enumerate(b.groups)])
        warming = np.array([g.state.warming if g.state else bld.warming[i] for i, g in enumerate(b.groups)])
        fresh = bld.count == 0
        bld.update(load, active, warming, minute)
        undo = fresh & ~good
        if undo.any():  # a group with no history and no good reading keeps no history
            bld.reset(np.nonzero(undo)[0])
        bld.active[:] = active  # machines are current even when the load is not (a repeated or bad reading)
        bld.warming[:] = warming
        has_history = bld.count > 0
        obs = bld.observation()

        desired = raw = None
        cause = ["model_unavailable"] * n if b.policy is None else [None] * n
        if b.policy is not None:
            t0 = time.perf_counter()
            try:
                out = b.policy.decide(obs)
                desired, raw = np.asarray(out.desired), np.asarray(out.raw)
                if desired.shape != (n,) or raw.shape != (n,):
                    raise ValueError(f"policy returned shapes {desired.shape}, {raw.shape} for {n} groups")
            except Exception as exc:
                self.streaks.bad(
                    ("policy", b.spec),
                    "model_error",
                    "policy failed; its groups use their fallback rule",
                    logging.ERROR,
                    exc_info=True,
                    policy=b.spec,
                    error=f"{type(exc).__name__}: {exc}",
                )
                desired = raw = None
                cause = ["model_error"] * n
            self.metrics.inference.observe(time.perf_counter() - t0)
            if desired is not None:
                finite = np.isfinite(desired.astype(np.float64)) & (desired.astype(np.float64) >= 0)
                cause = [None if finite[i] else "non_finite" for i in range(n)]
                if not finite.all():
                    bad = [g.name for i, g in enumerate(b.groups) if not finite[i]]
                    self.streaks.bad(
                        ("policy", b.spec),
                        "non_finite",
                        "policy output not finite or negative; those groups use their fallback rule",
                        logging.ERROR,
                        policy=b.spec,
                        groups=bad[:20],
                    )
                else:
                    self.streaks.good(("policy", b.spec), "policy output good again", policy=b.spec)

        need = [
            g.state is not None
            and (good[i] and cause[i] is not None or guards.needs_fallback(g.memory, g.status, g.limits))
            for i, g in enumerate(b.groups)
        ]
        fb: dict[int, int] = {}
        for key, policy in b.fallbacks.items():
            rows = [i for i, g in enumerate(b.groups) if need[i] and has_history[i] and fallback_key(g.cfg) == key]
            if rows:
                out = policy.decide(obs)
                for i in rows:
                    fb[i] = int(out.desired[i])
        res = {}
        for i, g in enumerate(b.groups):
            pd = int(desired[i]) if desired is not None and cause[i] is None else None
            rw = int(raw[i]) if raw is not None and cause[i] is None else None
            res[g.name] = (
                guards.Proposal(
                    policy_desired=pd, fallback_desired=fb.get(i), data_status=g.status, model_cause=cause[i]
                ),
                rw,
            )
        return res

    def _finish_group(self, g: GroupRuntime, prop: tuple | None, now_minute: int, wall: str) -> int:
        """Guards, write, journal, metrics for one group. Returns 1 when the group had a problem."""
        proposal, raw = prop if prop else (None, None)
        sample = g.sample
        load = sample.load_tpm if sample is not None and g.status == guards.DATA_OK else None
        row = dict(
            wall_time=wall,
            tick=self.tick_no,
            minute=now_minute,
            group_name=g.name,
            policy=g.cfg.policy,
            data_status=g.status,
            load_tpm=load,
            load_minute=sample.minute if sample else None,
        )
        if g.state is None:
            self.journal.add(
                JournalRow(
                    **row,
                    action="hold",
                    active=None,
                    warming=None,
                    desired_before=None,
                    raw_action=None,
                    policy_desired=None,
                    fallback_desired=None,
                    recommendation=None,
                    guards=["hold:backend-error"],
                    final=None,
                    outcome="error",
                )
            )
            self._summary(g, load, None, None, "backend error")
            return 1
        st = g.state
        now = guards.GroupNow(
            active=st.active, warming=st.warming, desired=st.desired, min_size=st.min_size, max_size=st.max_size
        )
        decision, g.memory = guards.decide(g.memory, now, proposal, g.limits, now_minute)
        if decision.write:
            try:
                outcome = self._write(g, decision.final)
            except BackendError as exc:
                outcome = "error"
                self.metrics.backend_errors.labels(g.name).inc()
                self.streaks.bad(
                    (g.name, "backend"),
                    "write",
                    "backend write failed",
                    group=g.name,
                    error=str(exc),
                    desired=decision.final,
                )
        elif g.limits.paused:
            outcome = "paused"
        else:
            outcome = "held" if decision.action == "hold" else "unchanged"
        if outcome != "error":
            self.streaks.good((g.name, "backend"), "backend good again", group=g.name)
        self.journal.add(
            JournalRow(
                **row,
                action=decision.action,
                active=st.active,
                warming=st.warming,
                desired_before=st.desired,
                raw_action=raw,
                policy_desired=proposal.policy_desired,
                fallback_desired=proposal.fallback_desired,
                recommendation=decision.recommendation,
                guards=list(decision.reasons),
                final=decision.final,
                outcome=outcome,
            )
        )
        m = self.metrics
        if load is not None:
            m.load.labels(g.name).set(load)
        m.machines.labels(g.name, "active").set(st.active)
        m.machines.labels(g.name, "warming").set(st.warming)
        m.machines.labels(g.name, "desired").set(decision.final)
        m.decisions.labels(g.name, guards.direction(decision.final, now), decision.reason).inc()
        if decision.action == "fallback" or (decision.action == "hold" and decision.fallback_cause):
            m.fallbacks.labels(g.name, decision.fallback_cause or "unknown").inc()
        self._summary(g, load, st, decision, outcome)
        return int(g.status != guards.DATA_OK or outcome == "error" or proposal.model_cause is not None)

    def _write(self, g: GroupRuntime, capacity: int) -> str:
        """The one place that writes a group, and so the one place that checks dry-run."""
        if self.dry_run:
            log.info(DRY_RUN_MARKER, extra={"group": g.name, "desired": capacity})
            self.metrics.dry_run_writes.labels(g.name).inc()
            return "dry-run"
        g.backend.set_desired(capacity)
        return "written"

    def _summary(self, g: GroupRuntime, load, st, decision, outcome: str) -> None:
        if not self.summary:
            return
        load_s = f"{load:.0f}tpm" if load is not None else f"-({g.status})"
        if st is None or decision is None:
            line = f"tick {self.tick_no} {g.name} load={load_s} {outcome}"
        else:
            how = (
                g.cfg.policy
                if decision.action == "policy"
                else (f"{g.cfg.fallback_policy} fallback" if decision.action == "fallback" else "hold")
            )
            line = (
                f"tick {self.tick_no} {g.name} load={load_s} active={st.active} warming={st.warming} "
                f"desired={decision.final} ({how}) {outcome} reasons={','.join(decision.reasons) or '-'}"
            )
        try:
            print(line, file=self.out, flush=True)
        except (OSError, ValueError):  # stdout closed (a pipe that went away): the summary is optional
            self.summary = False

    # --- health ------------------------------------------------------------------------------------------
    def healthz(self) -> tuple[bool, dict]:
        """Alive and ticks progressing: a tick finished within max(3 intervals, 30 s) (after the start-up)."""
        limit = max(3 * self.cfg.interval_seconds, 30.0)
        ref = self.last_tick_end or self.ready_since
        age = None if ref is None else time.monotonic() - ref
        ok = age is None or age <= limit
        return ok, {"ticks": self.tick_no, "seconds_since_last_tick": age, "limit_seconds": limit}

    def readyz(self) -> tuple[bool, dict]:
        """History backfilled and the last tick completed (ok, or partial: some groups held or fell back)."""
        ok = self.backfilled and self.last_outcome in ("ok", "partial")
        return ok, {"backfilled": self.backfilled, "last_tick_outcome": self.last_outcome}

    def request_stop(self) -> None:
        """Shutdown was asked for: backends stop retrying (a tick in a backoff finishes at once, so the daemon
        exits within seconds); the running tick is otherwise finished normally."""
        for g in self.groups:
            interrupt = getattr(g.backend, "interrupt", None)
            if interrupt is not None:
                interrupt()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self.journal.close()
        for g in self.groups:
            for obj in (g.source, g.backend):
                close = getattr(obj, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:  # closing is best effort
                        log.debug("close failed", exc_info=True)


# --- running -----------------------------------------------------------------------------------------------
def log_config(cfg: DaemonConfig, dry_run: bool) -> None:
    """The config, once, at start, with anything that looks like a credential masked."""
    log.info(
        "config",
        extra={
            "config": masked_dump(cfg),
            "dry_run": dry_run,
            "clock": "simulated" if cfg.simulated_clock else "wall",
            "ignored_environment": cfg.ignored_env,
        },
    )


def next_minute(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0) + timedelta(minutes=1)


def run_forever(daemon: Daemon, stop: threading.Event) -> None:
    """Tick now, then every interval (aligned to the minute on the wall clock), until `stop` is set; then let
    the running tick finish."""
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    interval = daemon.cfg.interval_seconds
    daemon.run_tick()
    if stop.is_set():
        return
    now = datetime.now(UTC)
    simulated = getattr(daemon.clock, "simulated", False)
    start = now + timedelta(seconds=interval) if simulated else next_minute(now)
    sched = BackgroundScheduler(
        timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
    )
    sched.add_listener(lambda ev: daemon.metrics.ticks.labels("skipped").inc(), EVENT_JOB_MAX_INSTANCES)
    sched.add_job(
        daemon.run_tick, IntervalTrigger(seconds=interval, start_date=start), id="tick", name="fleetpilot tick"
    )
    sched.start()
    log.info("scheduler started", extra={"interval_seconds": interval, "first_tick": start.isoformat()})
    try:
        while not stop.wait(0.2):
            pass
    finally:
        sched.shutdown(wait=True)  # waits for a running tick
