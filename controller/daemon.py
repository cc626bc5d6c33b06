"""The daemon: every tick read the load, build the observation, decide, guard, write, journal, export.

One tick passes values from step to step (see ../shared/DESIGN.md, "One path for data"):

1. `Reading`s: each group's source read for its last complete minute and classified: ok | error | empty | nan |
   invalid | stale | repeat;
2. `GroupState`s: simulated groups step their world to now (with that load); every backend is read (active,
   warming, desired); None when it cannot be;
3. `Proposed`s: per batch of groups sharing a policy (`controller.runtime.Batch`, which owns the one observation
   builder of its groups): the good readings go into the history, one batched `decide`, the fallback rule for the
   groups that need it;
4. per group: the pure guard chain (`controller.guards.decide`) gives the decision, then the write (the ONE place
   that checks dry-run), a journal row, metrics, and in simulated mode a one-line summary on stdout.

The assembly of groups, batches and policies from the config is `controller.assembly`. With simulator/CSV
sources the daemon runs on a simulated clock: tick k is simulated minute k (it observes minute k of the load;
minute 0 at the first tick, without stepping), whatever `interval_seconds` is. With real sources, ticks run on
the wall clock, aligned to the minute, and history is backfilled at start so a restarted daemon sees the same
observations as one that never stopped.
"""

from __future__ import annotations

import gc
import logging
import math
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TextIO

from prometheus_client import CollectorRegistry

from fleetpilot.controller import guards
from fleetpilot.controller.assembly import default_clock, make_batches, make_groups
from fleetpilot.controller.backends.base import Backend, BackendError, GroupState
from fleetpilot.controller.clock import CLOCK_JUMP_SECONDS, Clock, JumpDetector, SimulatedClock, WallClock
from fleetpilot.controller.config import DaemonConfig, masked_dump
from fleetpilot.controller.guards import Action, Cause, DataStatus
from fleetpilot.controller.journal import Journal, JournalRow
from fleetpilot.controller.lease import Lease, keep_warm
from fleetpilot.controller.logs import Streaks
from fleetpilot.controller.metrics import Metrics
from fleetpilot.controller.runtime import (
    NO_HISTORY,
    Batch,
    GroupRuntime,
    History,
    Outcome,
    PolicyRun,
    Proposed,
    Reading,
    TickOutcome,
    backfill_span_minutes,
    read_history,
)
from fleetpilot.controller.shadow import ShadowBook
from fleetpilot.controller.sources.base import MetricSource, SourceError
from fleetpilot.controller.status import StatusBoard, forecasts
from fleetpilot.policies.base import Policy
from fleetpilot.policies.observation import HISTORY_MINUTES

__all__ = ["CLOCK_JUMP_SECONDS", "DRY_RUN_MARKER", "Clock", "Daemon", "SimulatedClock", "WallClock", "run_forever"]

log = logging.getLogger("fleetpilot.daemon")
DRY_RUN_MARKER = "DRY-RUN: would set desired capacity"
#: From this many groups on, the objects alive after the backfill are frozen out of the garbage collector.
_FREEZE_GC_GROUPS = 1000
#: Most minutes a simulated group catches up in one tick after a pause (wall-clock mode).
_MAX_CATCH_UP_MINUTES = 60


class Now(NamedTuple):
    """The time of one tick: seconds since the epoch of the daemon's world, and its minute."""

    seconds: float
    minute: int

    @classmethod
    def at(cls, seconds: float) -> Now:
        return cls(seconds, int(seconds // 60))


class Daemon:
    def __init__(
        self,
        cfg: DaemonConfig,
        registry: CollectorRegistry | None = None,
        *,
        sources: list[MetricSource] | None = None,
        backends: list[Backend] | None = None,
        policies: Mapping[str, Policy] | None = None,
        clock: Clock | None = None,
        summary: bool = False,
        journal: Journal | None = None,
        out: TextIO | None = None,
        lease: Lease | None = None,
    ):
        """`sources`, `backends` (one per group), `policies` (by the groups' `policy` spec), `clock`, `journal` and
        `lease` replace what the config would make (tests, embedding). Dry-run is the config's (`cfg.with_dry_run`).
        With `leader_election` in the config (or a `lease`), only the lease holder decides and writes."""
        self.cfg = cfg
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, process=registry is None)
        self.summary = summary
        self.out = out or sys.stdout
        self.groups: list[GroupRuntime] = make_groups(cfg, sources, backends)
        self.clock: Clock = clock or default_clock(cfg, self.groups)
        self.journal = journal if journal is not None else Journal(cfg.journal_path)
        self.journal.on_error = lambda kind: self.metrics.journal_errors.labels(kind).inc()
        # the load history in files next to the journal: resident memory stays small at thousands of groups
        self.batches: list[Batch] = make_batches(self.groups, policies, directory=cfg.journal_path.parent)
        self.tick_no = 0
        self.backfilled = False
        self.started_at = time.monotonic()
        self.ready_since: float | None = None
        self.last_tick_end: float | None = None
        self.last_outcome: TickOutcome | None = None
        self._tick_lock = threading.Lock()
        self.streaks = Streaks(log)
        self._jumps = JumpDetector()
        self._gauges: dict[str, tuple[Any, ...]] = {}  #: per group: its machines gauges (active, warming, desired)
        self._simulated: list[int] | None = None  #: the plain simulated groups (known at the first tick)
        self._batchable: bool | None = None  #: any source or backend with a batch_key (known at the first tick)
        real = [g for g in self.groups if not g.cfg.simulated_clock]
        self._pool = (
            ThreadPoolExecutor(max_workers=min(16, len(real)), thread_name_prefix="fleetpilot-read")
            if len(real) > 1
            else None
        )
        for g in self.groups:
            self.metrics.init_group(g.name)
        if lease is None and cfg.leader_election is not None:
            lease = Lease(cfg.leader_election, self.registry)
        self.lease = lease
        self._fence: tuple[str, int] | None = None  #: (holder, token) of this tick's decisions under a lease
        # the status page and shadow mode: fed once per tick, after the live decisions (never affecting them)
        self.shadows = ShadowBook(self.groups).bind([g.name for g in self.groups])
        if self.shadows.active:
            self.registry.register(self.shadows)
        self.status = StatusBoard.of_daemon(cfg, self.groups, directory=cfg.journal_path.parent)
        self.status.economics = self.shadows if self.shadows.active else None
        self._tick_rows: list[JournalRow] = []
        self._observed: list[tuple[Batch, Any]] = []

    # --- start -------------------------------------------------------------------------------------------
    def backfill(self) -> None:
        """Feed each batch the last HISTORY_MINUTES of load from the sources, oldest first, a span of minutes at a
        time (`backfill_span_minutes`: a week at once for a few hundred groups, less for more, so the histories
        read never hold more than `BACKFILL_VALUES` values); then restore the scale-in stabilization windows
        from the journal. A source that fails is not read again: its group keeps what was read before."""
        now_minute = int(self.clock.now_seconds() // 60)
        # the last complete minute (now - 1) is left to the first tick, which reads it with the machines
        start, end = now_minute - HISTORY_MINUTES, now_minute - 1
        total = 0
        for b in self.batches:
            span = backfill_span_minutes(len(b.groups))
            failed: set[int] = set()
            for lo in range(start, end, span):
                hi = min(lo + span, end)
                series: list[History] = []
                for g in b.groups:
                    got = NO_HISTORY
                    if g.index not in failed:
                        try:
                            got = read_history(g.source, lo, hi, g.limits)
                        except SourceError as exc:
                            failed.add(g.index)
                            log.warning(
                                "history backfill failed; the group starts without the rest of its history",
                                extra={"group": g.name, "from_minute": lo, "error": str(exc)},
                            )
                            self.metrics.source_errors.labels(g.name, DataStatus.ERROR).inc()
                    series.append(got)
                    total += got.samples
                b.feed_history(series)
        for g in self.groups:
            w = g.cfg.scale_in_stabilization_minutes
            if w > 0:
                recs = self.journal.recent_recommendations(g.name, now_minute - w)
                g.memory = guards.Memory(recommendations=tuple(recs))
        self.backfilled = True
        if len(self.groups) >= _FREEZE_GC_GROUPS:
            # the groups' long-lived objects (configs, sources, backends, metric series) leave the collector's
            # generations: with thousands of groups a full collection scanning them costs a good part of a tick
            gc.collect()
            gc.freeze()
        self.ready_since = time.monotonic()
        log.info("history backfilled", extra={"samples": total, "minutes": HISTORY_MINUTES})

    # --- one tick ----------------------------------------------------------------------------------------
    def run_tick(self) -> TickOutcome:
        """One tick that never raises: the outcome is counted and logged. The cyclic garbage collector waits
        until the tick is over: a tick of many groups keeps tens of thousands of objects alive until its end,
        and each of the collector's automatic passes (hundreds a tick at 10,000 groups) would scan them again
        (refcounting still frees the tick's garbage as it goes; the collector runs after the tick)."""
        with self._tick_lock, _collector_paused():
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
                outcome = TickOutcome.ERROR
                self.tick_no += 1
            else:
                self.streaks.good(("tick",), "ticks complete again", tick=self.tick_no - 1)
            dt = time.perf_counter() - t0
            self.metrics.ticks.labels(outcome).inc()
            self.metrics.tick_duration.observe(dt)
            self.last_outcome = outcome
            if outcome != TickOutcome.ERROR:
                self.last_tick_end = time.monotonic()
                self.metrics.last_tick.set(time.time())
            return outcome

    def tick(self) -> TickOutcome:
        """readings -> states -> proposals -> guarded decisions, writes and journal rows; OK or PARTIAL."""
        if self.tick_no > 0:
            self.clock.advance()
        now = Now.at(self.clock.now_seconds())
        self._tick_rows, self._observed = [], []
        self._check_clock(now.seconds)
        if self.lease is not None:
            self._fence = self.lease.fence()
        standby = self.lease is not None and self._fence is None
        self._prefetch(now, backends=not standby)  # a standby never calls the backends, batched or not
        readings = self._read_sources(now)
        if self.lease is not None:
            if standby:  # keep the history warm, decide and write nothing
                if not self.clock.simulated:
                    for b in self.batches:
                        self._fill_gaps(b, [readings[g.index] for g in b.groups])
                keep_warm(self.batches, readings)
                self.tick_no += 1
                return TickOutcome.OK
        states = self._read_backends(now, readings)
        proposed = self._propose(readings, states)
        wall = datetime.now(UTC).isoformat(timespec="seconds")
        decisions = [self._decide(g, now.minute, states[g.index], proposed[g.index]) for g in self.groups]
        self._intend(now.minute, decisions)
        problems = 0
        for g, d in zip(self.groups, decisions, strict=True):
            i = g.index
            problems += self._settle(g, now.minute, wall, readings[i], states[i], proposed[i], d)
        self._watch(now.minute, readings, states)
        self.journal.commit()
        self.tick_no += 1
        return TickOutcome.OK if problems == 0 else TickOutcome.PARTIAL

    def _check_clock(self, now_s: float) -> None:
        """Detect the wall clock jumping against the monotonic clock between two ticks. A jump is counted and
        logged; the groups' scale-in stabilization windows move with it (they measure real time); readings
        older than the history (after a backward jump) are then `repeat` (held, never a scale-in), and a gap
        after a forward jump is backfilled from the source."""
        skew = self._jumps.check(now_s, self.clock.monotonic())
        if skew is None:
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

    # 0. batched reads
    def _prefetch(self, now: Now, backends: bool = True) -> None:
        """One batched read per tick of the sources and (with `backends`) backends that can be read together
        (AWS: see controller.aws_batch); the others, and any the batch could not read, are read one by one."""
        if self._batchable is None:
            self._batchable = any(part.batch_key() is not None for g in self.groups for part in (g.source, g.backend))
        if not self._batchable:
            return
        from fleetpilot.controller.aws_batch import prefetch

        try:
            prefetch([g.source for g in self.groups], [g.backend for g in self.groups] if backends else [], now.minute)
        except Exception as exc:  # the groups then read one by one
            log.warning("batched read failed", extra={"error": f"{type(exc).__name__}: {exc}"}, exc_info=True)

    # 1. readings
    def _read_one(self, g: GroupRuntime, now: Now) -> Reading:
        try:
            s = g.source.latest(now.minute)
        except SourceError as exc:
            return Reading(None, DataStatus.ERROR, str(exc))
        except Exception as exc:  # a source bug is a source error, not a dead tick
            return Reading(None, DataStatus.ERROR, f"{type(exc).__name__}: {exc}")
        if s is None:
            return Reading(s, DataStatus.EMPTY)
        if not math.isfinite(s.load_tpm):
            return Reading(s, DataStatus.NAN)
        if s.load_tpm < 0:
            return Reading(s, DataStatus.INVALID)
        if not guards.usable_load(s.load_tpm, g.limits):
            return Reading(s, DataStatus.IMPLAUSIBLE)  # beyond any plausible fleet: bad data, never a scale-in
        if now.seconds - (s.minute + 1) * 60.0 > g.cfg.stale_after_seconds:
            return Reading(s, DataStatus.STALE)
        if g.batch is not None and g.batch.is_repeat(g.row, s.minute):
            return Reading(
                s, DataStatus.REPEAT
            )  # older than the history already seen: the clock (or the source) went back
        return Reading(s, DataStatus.OK)

    def _read_sources(self, now: Now) -> list[Reading]:
        readings: list[Reading] = self._map(lambda g: self._read_one(g, now), self.groups)
        for g, r in zip(self.groups, readings, strict=True):
            if not r.ok:
                self.metrics.child(self.metrics.source_errors, g.name, r.status).inc()
                self.streaks.bad(
                    (g.name, "source"),
                    r.status,
                    "bad load reading",
                    group=g.name,
                    status=r.status,
                    error=r.error,
                    sample_minute=r.sample.minute if r.sample is not None else None,
                )
            else:
                self.streaks.good((g.name, "source"), "load reading good again", group=g.name)
        return readings

    # 2. states
    def _read_backends(self, now: Now, readings: list[Reading]) -> list[GroupState | None]:
        # a simulated world steps to now with the minute's load (a real group: nothing to do)
        loads = [
            r.sample.load_tpm if r.ok and r.sample is not None and r.sample.minute == now.minute - 1 else math.nan
            for r in readings
        ]
        stepped = self._advance_simulated(now.minute, loads)
        states: list[GroupState | None] = []
        for g, load in zip(self.groups, loads, strict=True):
            try:
                if not stepped[g.index]:
                    g.backend.advance_to(now.minute, load, _MAX_CATCH_UP_MINUTES)
                states.append(g.backend.read())
            except BackendError as exc:
                states.append(None)
                self.metrics.backend_errors.labels(g.name).inc()
                self.streaks.bad((g.name, "backend"), "read", "backend read failed", group=g.name, error=str(exc))
        return states

    def _advance_simulated(self, now_minute: int, loads: list[float]) -> list[bool]:
        """The plain simulated groups stepped together (numpy across groups, `simulated.advance_many`); True
        for each group stepped here, the others step one by one."""
        if self._simulated is None:
            from fleetpilot.controller.backends.simulated import SimulatedBackend

            plain = SimulatedBackend.advance_to
            self._simulated = [
                g.index
                for g in self.groups
                if isinstance(g.backend, SimulatedBackend) and type(g.backend).advance_to is plain
            ]
        stepped = [False] * len(self.groups)
        if len(self._simulated) > 1:
            from fleetpilot.controller.backends.simulated import advance_many

            advance_many(
                [self.groups[i].backend for i in self._simulated],
                now_minute,
                [loads[i] for i in self._simulated],
                _MAX_CATCH_UP_MINUTES,
            )
            for i in self._simulated:
                stepped[i] = True
        return stepped

    # 3. proposals
    def _propose(self, readings: list[Reading], states: list[GroupState | None]) -> list[Proposed]:
        proposed: dict[int, Proposed] = {}
        for b in self.batches:
            rs = [readings[g.index] for g in b.groups]
            ss = [states[g.index] for g in b.groups]
            if not self.clock.simulated:
                self._fill_gaps(b, rs)
            obs = b.observe(rs, ss)
            self._observed.append((b, obs))
            decided, run = b.decide(obs, rs, ss)
            self._report_policy(b, run)
            for g, p in zip(b.groups, decided, strict=True):
                proposed[g.index] = p
        return [proposed[g.index] for g in self.groups]  # every group is in one batch

    def _fill_gaps(self, b: Batch, readings: list[Reading]) -> None:
        """Minutes missed since a group's last sample (missed ticks, a forward clock jump) are read from the
        source's history rather than filled by holding the last value; the groups' reads go through the reader
        pool, as the minute's readings do (after a clock jump every group of a batch has a gap)."""
        gaps: list[tuple[GroupRuntime, int, int]] = []
        for g, r in zip(b.groups, readings, strict=True):
            start = b.gap_start(g.row, r.sample.minute) if r.ok and r.sample is not None else None
            if start is not None and r.sample is not None:
                gaps.append((g, start, r.sample.minute))
        if not gaps:
            return

        def read(gap: tuple[GroupRuntime, int, int]) -> History:
            g, start, end = gap
            try:
                return read_history(g.source, start, end, g.limits)
            except SourceError as exc:  # the builder then holds the last value over the gap
                log.info("gap backfill failed", extra={"group": g.name, "error": str(exc)})
                return NO_HISTORY

        got = dict(zip((g.index for g, _, _ in gaps), self._map(read, gaps), strict=True))
        b.feed_history([got.get(g.index, NO_HISTORY) for g in b.groups])

    def _map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """`fn` of each item, in order: in the reader pool when there is one and more than one item."""
        if self._pool is None or len(items) < 2:
            return [fn(x) for x in items]
        return list(self._pool.map(fn, items))

    def _report_policy(self, b: Batch, run: PolicyRun) -> None:
        key = ("policy", b.spec)
        if run.error is not None:
            self.streaks.bad(
                key,
                Cause.MODEL_ERROR,
                "policy failed; its groups use their fallback rule",
                logging.ERROR,
                exc_info=run.error,
                policy=b.spec,
                error=f"{type(run.error).__name__}: {run.error}",
            )
        if run.seconds is not None:
            self.metrics.inference.observe(run.seconds)
        if run.error is not None or run.seconds is None:
            return
        if run.non_finite:
            self.streaks.bad(
                key,
                Cause.NON_FINITE,
                "policy output not finite or negative; those groups use their fallback rule",
                logging.ERROR,
                policy=b.spec,
                groups=list(run.non_finite[:20]),
            )
        else:
            self.streaks.good(key, "policy output good again", policy=b.spec)

    # 4. decisions, writes, journal
    def _decide(
        self, g: GroupRuntime, now_minute: int, state: GroupState | None, p: Proposed
    ) -> tuple[guards.GroupNow, guards.Decision] | None:
        """The guarded decision of one group (its stabilization memory moves on); None without a group state."""
        if state is None:
            return None
        now = guards.GroupNow(
            active=state.active,
            warming=state.warming,
            desired=state.desired,
            min_size=state.min_size,
            max_size=state.max_size,
        )
        decision, g.memory = guards.decide(g.memory, now, p.proposal, g.limits, now_minute)
        return now, decision

    def _intend(self, now_minute: int, decided: list[tuple[guards.GroupNow, guards.Decision] | None]) -> None:
        """Before any write: commit this tick's recommendations of the groups with scale-in stabilization (a
        write-ahead), so that a daemon killed between here and the journal commit leaves the restarted one the
        stabilization window an uninterrupted run would have. When that commit fails the writes still go ahead
        (capacity before bookkeeping): logged and counted."""
        if self.cfg.dry_run:
            return
        rows = [
            (g.name, now_minute, d[1].recommendation)
            for g, d in zip(self.groups, decided, strict=True)
            if d is not None and d[1].recommendation is not None and g.limits.scale_in_stabilization_minutes > 0
        ]
        try:
            self.journal.intend(rows)
        except (sqlite3.Error, OSError) as exc:
            self.streaks.bad(
                ("journal", "intend"),
                type(exc).__name__,
                "journal write-ahead failed; writing anyway (a restart before the next commit forgets this tick)",
                logging.ERROR,
                groups=len(rows),
                error=str(exc),
            )
        else:
            self.streaks.good(("journal", "intend"), "journal write-ahead works again")

    def _settle(
        self,
        g: GroupRuntime,
        now_minute: int,
        wall: str,
        reading: Reading,
        state: GroupState | None,
        p: Proposed,
        decided: tuple[guards.GroupNow, guards.Decision] | None,
    ) -> int:
        """Write, journal, metrics for one group. Returns 1 when the group had a problem."""
        load = reading.load_tpm
        row: dict[str, Any] = dict(
            wall_time=wall,
            tick=self.tick_no,
            minute=now_minute,
            group_name=g.name,
            policy=g.cfg.policy,
            data_status=str(reading.status),  # plain str: sqlite binds it faster than a StrEnum
            load_tpm=load,
            load_minute=reading.sample.minute if reading.sample else None,
        )
        if self._fence is not None:
            row["lease_holder"], row["lease_token"] = self._fence
        if state is None or decided is None:
            self.journal.add(jr := JournalRow(**row, **_NO_STATE, guards=["hold:backend-error"]))
            self._tick_rows.append(jr)
            self._summary(g, reading, None, None, "backend error")  # the journal says Outcome.ERROR
            return 1
        now, decision = decided
        outcome = self._apply(g, decision)
        self.journal.add(
            jr := JournalRow(
                **row,
                action=str(decision.action),
                active=state.active,
                warming=state.warming,
                desired_before=state.desired,
                raw_action=p.raw,
                policy_desired=p.proposal.policy_desired,
                fallback_desired=p.proposal.fallback_desired,
                recommendation=decision.recommendation,
                guards=list(decision.reasons),
                final=decision.final,
                outcome=str(outcome),
            )
        )
        self._tick_rows.append(jr)
        self._count(g, load, now, decision)
        self._summary(g, reading, state, decision, outcome)
        return int(not reading.ok or outcome == Outcome.ERROR or p.proposal.model_cause is not None)

    def _watch(self, minute: int, readings: list[Reading], states: list[GroupState | None]) -> None:
        """Shadow policies and the status page's memory, after every live decision of the tick was made and
        written: their errors are logged, never raised."""
        rows, observed = self._tick_rows, self._observed
        shadows: dict[int, tuple[int | None, ...]] = {}
        try:
            shadows = self.shadows.tick(minute, observed, readings, states, [r.final for r in rows])
        except Exception as exc:
            self.streaks.bad(("shadow",), type(exc).__name__, "shadow policies failed", logging.ERROR, exc_info=True)
        else:
            self.streaks.good(("shadow",), "shadow policies run again")
        try:
            self.status.record(minute, rows, forecasts(observed, len(self.groups)), shadows)
        except Exception as exc:
            self.streaks.bad(("status",), type(exc).__name__, "status page update failed", logging.ERROR, exc_info=True)
        else:
            self.streaks.good(("status",), "status page updates again")

    def _apply(self, g: GroupRuntime, decision: guards.Decision) -> Outcome:
        """The write the decision asks for, if any; the outcome for the journal."""
        if decision.write:
            try:
                outcome = self._write(g, decision.final)
            except BackendError as exc:
                outcome = Outcome.ERROR
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
            outcome = Outcome.PAUSED
        else:
            outcome = Outcome.HELD if decision.action == Action.HOLD else Outcome.UNCHANGED
        if outcome != Outcome.ERROR:
            self.streaks.good((g.name, "backend"), "backend good again", group=g.name)
        return outcome

    def _write(self, g: GroupRuntime, capacity: int) -> Outcome:
        """The one place that writes a group, and so the one place that checks dry-run."""
        if self.cfg.dry_run:
            log.info(DRY_RUN_MARKER, extra={"group": g.name, "desired": capacity})
            self.metrics.dry_run_writes.labels(g.name).inc()
            return Outcome.DRY_RUN
        if self._fence is not None and self.lease is not None and not self.lease.may_write(self._fence[1]):
            log.warning("lease lost during the tick: not written", extra={"group": g.name, "desired": capacity})
            return Outcome.FENCED
        g.backend.set_desired(capacity)
        return Outcome.WRITTEN

    def _count(self, g: GroupRuntime, load: float | None, now: guards.GroupNow, decision: guards.Decision) -> None:
        m, name = self.metrics, g.name
        gauges = self._gauges.get(name)
        if gauges is None:  # the group's always-set series, looked up once
            gauges = self._gauges[name] = tuple(m.child(m.machines, name, s) for s in ("active", "warming", "desired"))
        if load is not None:
            m.child(m.load, name).set(load)
        gauges[0].set(now.active)
        gauges[1].set(now.warming)
        gauges[2].set(decision.final)
        m.child(m.decisions, name, guards.direction(decision.final, now), decision.reason).inc()
        if decision.action == Action.FALLBACK or (decision.action == Action.HOLD and decision.fallback_cause):
            m.child(m.fallbacks, name, decision.fallback_cause or "unknown").inc()

    def _summary(
        self,
        g: GroupRuntime,
        reading: Reading,
        st: GroupState | None,
        decision: guards.Decision | None,
        outcome: str,
    ) -> None:
        if not self.summary:
            return
        load = reading.load_tpm
        load_s = f"{load:.0f}tpm" if load is not None else f"-({reading.status})"
        if st is None or decision is None:
            line = f"tick {self.tick_no} {g.name} load={load_s} {outcome}"
        else:
            how = (
                g.cfg.policy
                if decision.action == Action.POLICY
                else (f"{g.cfg.fallback_policy} fallback" if decision.action == Action.FALLBACK else "hold")
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
        ok = self.backfilled and self.last_outcome in (TickOutcome.OK, TickOutcome.PARTIAL)
        return ok, {"backfilled": self.backfilled, "last_tick_outcome": self.last_outcome}

    def request_stop(self) -> None:
        """Shutdown was asked for: backends stop retrying (a tick in a backoff finishes at once, so the daemon
        exits within seconds); the running tick is otherwise finished normally."""
        for g in self.groups:
            g.backend.interrupt()

    def close(self) -> None:
        if self.lease is not None:  # after the last write: a standby may take over at once
            self.lease.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self.journal.close()
        for g in self.groups:
            for part in (g.source, g.backend):
                try:
                    part.close()
                except Exception:  # closing is best effort
                    log.debug("close failed", exc_info=True)


#: The journal row of a group whose backend could not be read: nothing decided, nothing written.
_NO_STATE: dict[str, Any] = dict(
    action=str(Action.HOLD),
    active=None,
    warming=None,
    desired_before=None,
    raw_action=None,
    policy_desired=None,
    fallback_desired=None,
    recommendation=None,
    final=None,
    outcome=str(Outcome.ERROR),
)


# --- running -----------------------------------------------------------------------------------------------
def log_config(cfg: DaemonConfig) -> None:
    """The config, once, at start, with anything that looks like a credential masked."""
    log.info(
        "config",
        extra={
            "config": masked_dump(cfg),
            "dry_run": cfg.dry_run,
            "clock": "simulated" if cfg.simulated_clock else "wall",
            "ignored_environment": cfg.ignored_env,
        },
    )


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off inside, back as it was after (on, unless someone had turned it off)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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
    start = now + timedelta(seconds=interval) if daemon.clock.simulated else next_minute(now)
    sched = BackgroundScheduler(
        timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
    )
    sched.add_listener(lambda ev: daemon.metrics.ticks.labels("skipped").inc(), EVENT_JOB_MAX_INSTANCES)
    if daemon.lease is not None:  # a standby that wins the lease decides at once, not at the next tick
        daemon.lease.on_acquired = lambda: sched.add_job(daemon.run_tick, id="takeover", replace_existing=True)
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
