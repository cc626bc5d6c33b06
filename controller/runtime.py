"""What the daemon keeps between ticks: its groups and its batches, and the values a tick passes along.

A `Batch` is the groups decided by one batched policy call (same policy spec, parameters and warm-up). It owns
the one observation builder of those groups: nothing else touches the builder. A tick asks it to
`feed_history` (backfill, gaps), to `observe` this minute's readings and machines, and to `decide`, which
returns one `Proposed` per group (the guards then make the decision) and how the policy fared (`PolicyRun`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fleetpilot.controller import guards
from fleetpilot.controller.backends.base import Backend, GroupState
from fleetpilot.controller.config import GroupConfig
from fleetpilot.controller.sources.base import MetricSource, Sample
from fleetpilot.policies.base import Policy
from fleetpilot.policies.observation import HISTORY_MINUTES, Observation, ObservationBuilder

_OK = guards.DataStatus.OK  # a module constant: read per group and tick, faster than the enum's attribute


class Outcome(StrEnum):
    """What happened to a group's decision (the journal's `outcome`)."""

    WRITTEN = "written"
    DRY_RUN = "dry-run"  #: the write was skipped: dry-run
    UNCHANGED = "unchanged"  #: the decision is the group's desired capacity already
    HELD = "held"  #: held (bad data, no fallback): nothing to write
    PAUSED = "paused"  #: decided, never written
    FENCED = "fenced"  #: not written: the daemon lost its lease (leader election) during the tick
    ERROR = "error"  #: the backend could not be read or written


class TickOutcome(StrEnum):
    """How a tick went (the `outcome` label of the tick counter)."""

    OK = "ok"
    PARTIAL = "partial"  #: some groups held, fell back or could not be written
    ERROR = "error"  #: the tick failed


@dataclass
class GroupRuntime:
    """A group's parts and what it remembers between ticks (the guards' memory)."""

    cfg: GroupConfig
    source: MetricSource
    backend: Backend
    limits: guards.Limits
    index: int  #: position among the daemon's groups
    memory: guards.Memory = field(default_factory=guards.Memory)
    batch: Batch | None = None
    row: int = -1  #: position in its batch

    @property
    def name(self) -> str:
        return self.cfg.name


class Reading(NamedTuple):
    """A group's load reading of one tick: the sample (if any) and its status (guards.DATA_OK or why it is bad).
    A named tuple: one per group and tick, cheap to make."""

    sample: Sample | None
    status: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == _OK

    @property
    def load_tpm(self) -> float | None:
        """The load when the reading is good, else None."""
        return self.sample.load_tpm if self.sample is not None and self.ok else None


class Proposed(NamedTuple):
    """What a group's batch proposes this tick, and the policy's raw action (None without a policy answer)."""

    proposal: guards.Proposal
    raw: int | None


@dataclass(frozen=True)
class PolicyRun:
    """How a batch's policy fared in one `decide`. `seconds` is None when the batch has no policy."""

    causes: list[str | None]  #: per group: None, or why the policy's answer is not used
    seconds: float | None = None
    error: Exception | None = None  #: the policy raised (or answered in the wrong shape)
    non_finite: tuple[str, ...] = ()  #: groups whose answer was not finite or negative


class History(NamedTuple):
    """A group's samples for the builder: the loads (float64) of the minutes from `start` on, NaN where there is
    no sample (a load the decision may use is never NaN): 8 bytes a minute, a week of one group 80 kB (as a
    dict of Python numbers it was about 1 MB)."""

    start: int
    loads: np.ndarray

    @classmethod
    def of(cls, samples: dict[int, float]) -> History:
        if not samples:
            return NO_HISTORY
        minutes = np.fromiter(samples.keys(), np.int64, len(samples))
        start = int(minutes.min())
        loads = np.full(int(minutes.max()) - start + 1, np.nan)
        loads[minutes - start] = np.fromiter(samples.values(), np.float64, len(samples))
        return cls(start, loads)

    @classmethod
    def one(cls, minute: int, load: float) -> History:
        """A single sample (a standby's minute: `controller.lease.keep_warm`)."""
        return cls(int(minute), np.array([float(load)]))

    @property
    def samples(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.loads)))


NO_HISTORY = History(0, np.zeros(0))
#: Minutes of every group's history turned into one (groups x minutes) matrix at a time by `feed_history`.
FEED_BLOCK_MINUTES = 1440
#: The start-up backfill reads a batch's sources a span of minutes at a time, so that the span's histories hold
#: at most this many (groups x minutes) values (64 MB of float64; `backfill_span_minutes`).
BACKFILL_VALUES = 8_000_000


def backfill_span_minutes(groups: int) -> int:
    """Minutes of history the start-up backfill reads from each of a batch's `groups` sources at once: the whole
    `HISTORY_MINUTES` up to 793 groups (one read a group), fewer beyond (10,000 groups: 800 minutes, 13 reads
    a group), never under an hour."""
    return max(60, min(HISTORY_MINUTES, BACKFILL_VALUES // max(groups, 1)))


def read_history(source: MetricSource, start: int, end: int, limits: guards.Limits) -> History:
    """The source's good samples in [start, end) (loads the decision may not use, see `guards.usable_load`, left
    out; a minute given twice: the later sample). Raises SourceError."""
    got: dict[int, float] = {}
    for s in source.history(start, end):
        if guards.usable_load(s.load_tpm, limits) and start <= s.minute < end:
            got[int(s.minute)] = float(s.load_tpm)
    return History.of(got)


def params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def fallback_key(g: GroupConfig) -> str:
    return f"{g.fallback_policy} {params_key(g.fallback_policy_params)}"


class Batch:
    """Groups decided by one batched call: same policy spec, parameters and warm-up."""

    def __init__(
        self,
        spec: str,
        params: dict[str, Any],
        warmup_minutes: int,
        groups: list[GroupRuntime],
        fallbacks: dict[str, Policy],
        directory: Path | None = None,
    ):
        """`directory`: where the builder keeps its history in an unnamed file (the daemon's state directory;
        None: in memory; see policies.rowstore)."""
        self.spec, self.params, self.warmup_minutes, self.groups = spec, params, warmup_minutes, groups
        caps = np.array([g.cfg.capacity_tpm_per_machine for g in groups], dtype=np.float64)
        self.builder = ObservationBuilder(len(groups), caps, warmup_minutes, directory=directory)
        self.fallbacks = fallbacks  #: by fallback key, each reset for this batch
        self.policy: Policy | None = None
        self.policy_error: str | None = None  #: why there is no policy (its groups run on their fallback rule)

    def set_policy(self, policy: Policy | None, error: str | None = None) -> None:
        self.policy, self.policy_error = policy, error
        if policy is not None:
            policy.reset(len(self.groups))

    # --- history -------------------------------------------------------------------------------------------
    def has_history(self, row: int) -> bool:
        return bool(self.builder.count[row] > 0)

    def last_minute(self, row: int) -> int:
        """The minute of the group's last sample (meaningful when it has history)."""
        return int(self.builder.minute[row])

    def is_repeat(self, row: int, minute: int) -> bool:
        """A sample at `minute` is older than the group's history (the clock, or the source, went back)."""
        return bool(self.builder.count[row] > 0 and minute < self.builder.minute[row])

    def gap_start(self, row: int, minute: int) -> int | None:
        """The first minute missing from the group's history before a sample at `minute` (missed ticks, a forward
        clock jump), at most HISTORY_MINUTES back; None when there is no gap (or no history to extend)."""
        if not self.has_history(row) or minute - self.last_minute(row) <= 1:
            return None
        return max(self.last_minute(row) + 1, minute - HISTORY_MINUTES)

    def feed_history(self, series: list[History]) -> None:
        """Feed one History per group, minute by minute, oldest first. A group without a sample at a minute is
        left alone (its gap is later held by the builder). The (groups x minutes) matrix is built a day at a
        time (`FEED_BLOCK_MINUTES`), so a week of 10,000 groups never stands in memory as one matrix."""
        given = [h for h in series if h.loads.size]
        if not given:
            return
        lo = min(h.start for h in given)
        hi = max(h.start + h.loads.size for h in given)
        n = len(self.groups)
        zeros = np.zeros(n, dtype=np.int64)
        for start in range(lo, hi, FEED_BLOCK_MINUTES):
            end = min(start + FEED_BLOCK_MINUTES, hi)
            mat = np.full((n, end - start), np.nan)
            for i, h in enumerate(series):
                a, z = max(start, h.start), min(end, h.start + h.loads.size)
                if z > a:
                    mat[i, a - start : z - start] = h.loads[a - h.start : z - h.start]
            present = ~np.isnan(mat)
            for j in range(end - start):
                has = present[:, j]
                if has.any():
                    self.builder.update_where(has, mat[:, j], zeros, zeros, np.full(n, start + j))

    # --- one tick ------------------------------------------------------------------------------------------
    def observe(self, readings: list[Reading], states: list[GroupState | None]) -> Observation:
        """Add this minute's good readings (with the machines) to the history; the observation of every group.
        A bad reading adds nothing (a group without history stays without); machines are current whenever the
        backend could be read."""
        bld = self.builder
        good = np.array([r.ok and st is not None for r, st in zip(readings, states, strict=True)])
        load = np.array([r.sample.load_tpm if good[i] and r.sample else 0.0 for i, r in enumerate(readings)])
        minute = np.array([r.sample.minute if good[i] and r.sample else 0 for i, r in enumerate(readings)])
        active = np.array([st.active if st else bld.active[i] for i, st in enumerate(states)])
        warming = np.array([st.warming if st else bld.warming[i] for i, st in enumerate(states)])
        bld.update_where(good, load, active, warming, minute)
        bld.set_machines(active, warming)
        return bld.observation()

    def decide(
        self, obs: Observation, readings: list[Reading], states: list[GroupState | None]
    ) -> tuple[list[Proposed], PolicyRun]:
        """One batched policy call, then the fallback rules for the groups that need them."""
        run, desired, raw = self._run_policy(obs)
        causes = run.causes
        has_history = self.builder.count > 0
        need = [
            states[i] is not None
            and (
                readings[i].ok
                and causes[i] is not None
                or guards.needs_fallback(g.memory, readings[i].status, g.limits)
            )
            for i, g in enumerate(self.groups)
        ]
        fb: dict[int, int] = {}
        for key, policy in self.fallbacks.items():
            rows = [i for i, g in enumerate(self.groups) if need[i] and has_history[i] and fallback_key(g.cfg) == key]
            if rows:
                out = policy.decide(obs)
                for i in rows:
                    fb[i] = int(out.desired[i])
        proposed = []
        for i, r in enumerate(readings):
            use = desired is not None and raw is not None and causes[i] is None
            proposal = guards.Proposal(
                policy_desired=int(desired[i]) if use and desired is not None else None,
                fallback_desired=fb.get(i),
                data_status=r.status,
                model_cause=causes[i],
            )
            proposed.append(Proposed(proposal, int(raw[i]) if use and raw is not None else None))
        return proposed, run

    def _run_policy(self, obs: Observation) -> tuple[PolicyRun, np.ndarray | None, np.ndarray | None]:
        """The policy's answer (desired, raw) and how it fared; no answer on an error or without a policy."""
        n = len(self.groups)
        if self.policy is None:
            return PolicyRun([guards.Cause.MODEL_UNAVAILABLE] * n), None, None
        t0 = time.perf_counter()
        try:
            out = self.policy.decide(obs)
            desired, raw = np.asarray(out.desired), np.asarray(out.raw)
            if desired.shape != (n,) or raw.shape != (n,):
                raise ValueError(f"policy returned shapes {desired.shape}, {raw.shape} for {n} groups")
        except Exception as exc:
            return PolicyRun([guards.Cause.MODEL_ERROR] * n, time.perf_counter() - t0, error=exc), None, None
        seconds = time.perf_counter() - t0
        values = desired.astype(np.float64)
        finite = np.isfinite(values) & (values >= 0)
        causes: list[str | None] = [None if finite[i] else guards.Cause.NON_FINITE for i in range(n)]
        bad = tuple(g.name for i, g in enumerate(self.groups) if not finite[i])
        return PolicyRun(causes, seconds, non_finite=bad), desired, raw
