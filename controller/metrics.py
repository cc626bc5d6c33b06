"""Every Prometheus metric of the daemon, in one place, registered on an injected CollectorRegistry.

Names are in base units with the `fleetpilot_` prefix, label sets are fixed, counters end in `_total`.
docs/metrics.md describes each one.

The per-group series (labelled by `group`: tens of thousands of them at 10,000 groups) are `GroupSeries`:
the same exposition as prometheus_client's Gauge and Counter (a counter's `_total` and `_created` samples),
with each labelled series a slotted object of two floats instead of a full metric object (about a quarter of
the memory).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

TICK_OUTCOMES = ("ok", "partial", "error", "skipped")
MACHINE_STATES = ("active", "warming", "desired")
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SeriesValue:
    """One labelled series of a `GroupSeries`: `set` (gauges), `inc` (both). Written by the tick's thread only;
    a scrape reads a float (atomic under the GIL)."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class GroupSeries(Collector):
    """A labelled gauge or counter (`kind`) whose series are `SeriesValue`s: `labels(*values)` as prometheus_client
    (positional label values, one series per distinct values, created on first use at zero)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], kind: str, registry: CollectorRegistry):
        if kind not in ("gauge", "counter"):
            raise ValueError(f"GroupSeries: kind {kind!r}")
        self.name = name.removesuffix("_total") if kind == "counter" else name
        self.documentation, self.labelnames, self.kind = documentation, list(labelnames), kind
        self.series: dict[tuple[str, ...], SeriesValue] = {}
        registry.register(self)

    def labels(self, *values: Any) -> SeriesValue:
        found = self.series.get(values)  # label values are strings (or StrEnums, which hash and compare as them)
        if found is None:
            key = tuple(str(v) for v in values)
            found = self.series.get(key)
        if found is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values, got {len(key)}")
            found = self.series[key] = SeriesValue()
        return found

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        items = list(self.series.items())
        if self.kind == "counter":
            counter = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for key, v in items:
                counter.add_metric(key, v.value, created=v.created)
            yield counter
        else:
            gauge = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for key, v in items:
                gauge.add_metric(key, v.value)
            yield gauge


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
        self.load = GroupSeries(
            "fleetpilot_load_tpm", "Last good load reading, transactions per minute", ["group"], "gauge", r
        )
        self.machines = GroupSeries(
            "fleetpilot_machines",
            "Machines of a group by state: active, warming, desired (the final desired capacity decided this tick)",
            ["group", "state"],
            "gauge",
            r,
        )
        self.decisions = GroupSeries(
            "fleetpilot_decisions",
            "Decisions by direction (against the group's desired capacity) and deciding reason",
            ["group", "direction", "reason"],
            "counter",
            r,
        )
        self.fallbacks = GroupSeries(
            "fleetpilot_fallbacks", "Ticks decided by the fallback rule, by cause", ["group", "cause"], "counter", r
        )
        self.source_errors = GroupSeries(
            "fleetpilot_source_errors",
            "Bad load readings by kind: error, empty, nan, stale, invalid",
            ["group", "kind"],
            "counter",
            r,
        )
        self.backend_errors = GroupSeries(
            "fleetpilot_backend_errors", "Failed reads or writes of a group", ["group"], "counter", r
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
            "intend (the write-ahead of a tick's recommendations failed; the writes went ahead), "
            "deleted (the journal file was deleted or replaced while running; recreated)",
            ["kind"],
            registry=r,
        )
        self.dry_run_writes = GroupSeries(
            "fleetpilot_dry_run_writes", "Writes skipped because of dry-run", ["group"], "counter", r
        )
        for outcome in TICK_OUTCOMES:
            self.ticks.labels(outcome)
        for kind in ("commit", "intend", "deleted"):
            self.journal_errors.labels(kind)
        for direction in ("forward", "backward"):
            self.clock_jumps.labels(direction)

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: the per-group series of the hot path (labels() costs
        microseconds a call, a dict lookup a tenth of that). Created on first use, as labels() does. A
        `GroupSeries` is its own cache (its labels() is that dict lookup)."""
        if type(metric) is GroupSeries:
            return metric.series.get(labels) or metric.labels(*labels)
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def init_group(self, group: str) -> None:
        """Create a group's always-present series at zero, so rate() works from the first scrape."""
        self.backend_errors.labels(group)
        self.dry_run_writes.labels(group)
