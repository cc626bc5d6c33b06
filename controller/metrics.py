"""Every Prometheus metric of the daemon, in one place, registered on an injected CollectorRegistry.

Names are in base units with the `fleetpilot_` prefix, label sets are fixed, counters end in `_total`.
docs/metrics.md describes each one.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

TICK_OUTCOMES = ("ok", "partial", "error", "skipped")
MACHINE_STATES = ("active", "warming", "desired")
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry, process: bool = False):
        """`process`: also export prometheus_client's process_* metrics (memory, CPU, file descriptors)."""
        self.registry = registry
        self._children: dict[tuple, Any] = {}
        r = registry
        if process:
            ProcessCollector(registry=r)
        self.ticks = Counter(
            "fleetpilot_ticks",
            "Ticks by outcome: ok, partial (some groups failed), error "
            "(the tick raised), skipped (the previous tick was still running)",
            ["outcome"],
            registry=r,
        )
        self.tick_duration = Histogram(
            "fleetpilot_tick_duration_seconds", "Wall time of one tick", buckets=_TICK_BUCKETS, registry=r
        )
        self.last_tick = Gauge(
            "fleetpilot_last_tick_timestamp_seconds",
            "Unix time when the last tick finished (any outcome but error)",
            registry=r,
        )
        self.load = Gauge(
            "fleetpilot_load_tpm", "Last good load reading, transactions per minute", ["group"], registry=r
        )
        self.machines = Gauge(
            "fleetpilot_machines",
            "Machines of a group by state: active, warming, desired (the final desired capacity decided this tick)",
            ["group", "state"],
            registry=r,
        )
        self.decisions = Counter(
            "fleetpilot_decisions",
            "Decisions by direction (against the group's desired capacity) and deciding reason",
            ["group", "direction", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "fleetpilot_fallbacks", "Ticks decided by the fallback rule, by cause", ["group", "cause"], registry=r
        )
        self.source_errors = Counter(
            "fleetpilot_source_errors",
            "Bad load readings by kind: error, empty, nan, stale, invalid",
            ["group", "kind"],
            registry=r,
        )
        self.backend_errors = Counter(
            "fleetpilot_backend_errors", "Failed reads or writes of a group", ["group"], registry=r
        )
        self.inference = Histogram(
            "fleetpilot_inference_seconds",
            "Wall time of one batched policy decision",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.clock_jumps = Counter(
            "fleetpilot_clock_jumps",
            "Jumps of the wall clock against the monotonic clock "
            "between two ticks (more than 30 s), by direction: forward, backward",
            ["direction"],
            registry=r,
        )
        self.journal_errors = Counter(
            "fleetpilot_journal_errors",
            "Journal faults by kind: commit (a commit failed; its rows are kept for the next one), "
            "deleted (the journal file was deleted or replaced while running; recreated)",
            ["kind"],
            registry=r,
        )
        self.dry_run_writes = Counter(
            "fleetpilot_dry_run_writes", "Writes skipped because of dry-run", ["group"], registry=r
        )
        for outcome in TICK_OUTCOMES:
            self.ticks.labels(outcome)
        for kind in ("commit", "deleted"):
            self.journal_errors.labels(kind)
        for direction in ("forward", "backward"):
            self.clock_jumps.labels(direction)

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: the per-group series of the hot path (labels() costs
        microseconds a call, a dict lookup a tenth of that). Created on first use, as labels() does."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def init_group(self, group: str) -> None:
        """Create a group's always-present series at zero, so rate() works from the first scrape."""
        self.backend_errors.labels(group)
        self.dry_run_writes.labels(group)
