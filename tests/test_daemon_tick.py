"""The tick in-process, with sources and backends that misbehave on demand."""

from __future__ import annotations

import logging
import math
import sqlite3

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fleetpilot.controller.backends.base import BackendError, GroupState
from fleetpilot.controller.backends.simulated import SimulatedBackend
from fleetpilot.controller.clock import Clock
from fleetpilot.controller.config import DaemonConfig
from fleetpilot.controller.daemon import DRY_RUN_MARKER, Daemon
from fleetpilot.controller.journal import read_decisions
from fleetpilot.controller.sources.base import MetricSource, Sample, SourceError
from fleetpilot.policies.base import Policy, PolicyOutput
from fleetpilot.sim.params import FleetParams

START = 29_000_000  # an epoch minute (2025-02-18)


class FakeClock(Clock):
    """A wall clock the test moves: one minute per tick (advance), like a real minute-aligned schedule."""

    simulated = False

    def __init__(self, minute: int = START):
        self.minute = minute

    def now_seconds(self) -> float:
        return self.minute * 60.0 + 2.0

    def advance(self) -> None:
        self.minute += 1


class FakeSource(MetricSource):
    """load(minute) = a smooth daily-ish curve; `mode` makes the next readings bad."""

    def __init__(self, scale: float = 1.0, history_minutes: int | None = 600):
        self.mode, self.scale, self.history_minutes = "ok", scale, history_minutes

    def load(self, m: int) -> float:
        return float(np.floor(self.scale * (4000 + 2500 * math.sin(m / 90.0))))

    def latest(self, now_minute: int):
        m = now_minute - 1
        if self.mode == "error":
            raise SourceError("connection refused")
        if self.mode == "empty":
            return None
        if self.mode == "nan":
            return Sample(m, float("nan"))
        if self.mode == "stale":
            return Sample(m - 30, self.load(m - 30))
        if self.mode == "negative":
            return Sample(m, -5.0)
        return Sample(m, self.load(m))

    def history(self, start: int, end: int):
        if self.history_minutes is not None:
            start = max(start, end - self.history_minutes)
        return [Sample(m, self.load(m)) for m in range(start, end)]

    def close(self):
        pass


class FlakyBackend(SimulatedBackend):
    def __init__(self, **kw):
        super().__init__(FleetParams(), seed=0)
        self.fail_read = self.fail_write = False
        self.writes: list[int] = []

    def read(self) -> GroupState:
        if self.fail_read:
            raise BackendError("throttled")
        return super().read()

    def set_desired(self, capacity: int) -> None:
        if self.fail_write:
            raise BackendError("ResourceContention")
        self.writes.append(capacity)
        super().set_desired(capacity)


def group(name="web", **kw) -> dict:
    g = {
        "name": name,
        "policy": "target-tracking",
        "min_machines": 1,
        "max_machines": 200,
        "bad_data_ticks_before_fallback": 2,
        "source": {"kind": "prometheus", "url": "http://127.0.0.1:1", "query": "q"},
        "backend": {"kind": "simulated"},
    }
    g.update(kw)
    return g


def make(tmp_path, groups=None, sources=None, backends=None, registry=None, clock=None, policies=None, **cfg_kw):
    groups = groups or [group()]
    cfg = DaemonConfig(interval_seconds=60, journal_path=tmp_path / "j.sqlite", groups=groups, **cfg_kw)
    sources = sources or [FakeSource() for _ in groups]
    backends = backends or [FlakyBackend() for _ in groups]
    d = Daemon(
        cfg,
        registry or CollectorRegistry(),
        sources=sources,
        backends=backends,
        clock=clock or FakeClock(),
        policies=policies,
    )
    d.backfill()
    return d


def metric(d: Daemon, name: str, **labels) -> float:
    v = d.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def rows(tmp_path, group=None):
    return read_decisions(tmp_path / "j.sqlite", group, 10_000)


def test_bad_readings_hold_then_fall_back_and_are_counted(tmp_path):
    src = FakeSource()
    d = make(tmp_path, sources=[src])
    assert d.run_tick() == "ok"
    for mode in ("error", "empty", "nan", "stale", "negative"):
        src.mode = mode
        assert d.run_tick() == "partial"
    d.close()
    r = rows(tmp_path)
    assert [x["data_status"] for x in r] == ["ok", "error", "empty", "nan", "stale", "invalid"]
    assert [x["action"] for x in r] == ["policy", "hold", "fallback", "fallback", "fallback", "fallback"]
    assert r[1]["guards"] == ["hold:error"] and r[1]["outcome"] in ("held",)
    assert all(x["final"] >= x["desired_before"] for x in r[1:])  # never a scale-in on bad data
    for kind in ("error", "empty", "nan", "stale", "invalid"):
        assert metric(d, "fleetpilot_source_errors_total", group="web", kind=kind) == 1
    assert metric(d, "fleetpilot_fallbacks_total", group="web", cause="bad_data") == 4
    assert metric(d, "fleetpilot_ticks_total", outcome="partial") == 5


def test_fallback_uses_the_last_good_load(tmp_path):
    src = FakeSource()
    d = make(tmp_path, sources=[src])
    d.run_tick()
    good = d.batches[0].builder.load.copy()
    src.mode = "nan"
    d.run_tick(), d.run_tick()
    assert np.array_equal(d.batches[0].builder.load, good)  # bad data never entered the history
    d.close()


class Exploding(Policy):
    name = "exploding"

    def __init__(self, how):
        self.how = how

    def reset(self, n):
        pass

    def decide(self, obs):
        if self.how == "raise":
            raise RuntimeError("onnxruntime: bad input")
        return PolicyOutput(np.full(obs.n, np.nan), np.zeros(obs.n))


@pytest.mark.parametrize("how, cause", [("raise", "model_error"), ("nan", "non_finite")])
def test_model_failure_uses_the_fallback_rule(tmp_path, how, cause, caplog):
    d = make(tmp_path, policies={"target-tracking": Exploding(how)})
    with caplog.at_level(logging.ERROR):
        assert d.run_tick() == "partial"
    d.close()
    (r,) = rows(tmp_path)
    assert r["action"] == "fallback" and r["guards"][0] == f"fallback:{cause}" and r["fallback_desired"] is not None
    assert metric(d, "fleetpilot_fallbacks_total", group="web", cause=cause) == 1
    assert metric(d, "fleetpilot_inference_seconds_count") == 1


def test_paused_group_is_decided_but_never_written(tmp_path):
    b = FlakyBackend()
    d = make(tmp_path, groups=[group(paused=True)], backends=[b])
    for _ in range(5):
        d.run_tick()
    d.close()
    assert b.writes == [] and {x["outcome"] for x in rows(tmp_path)} == {"paused"}
    assert all("paused" in x["guards"] for x in rows(tmp_path))


def test_dry_run_runs_everything_but_the_write(tmp_path, caplog):
    b = FlakyBackend()
    d = make(tmp_path, backends=[b], dry_run=True)
    before = b.read()
    with caplog.at_level(logging.INFO, logger="fleetpilot.daemon"):
        for _ in range(20):
            d.run_tick()
    d.close()
    assert b.writes == [] and b.read() == before  # the simulated group is untouched
    r = rows(tmp_path)
    n_dry = sum(x["outcome"] == "dry-run" for x in r)
    assert n_dry > 0 and all(x["final"] != x["desired_before"] for x in r if x["outcome"] == "dry-run")
    assert metric(d, "fleetpilot_dry_run_writes_total", group="web") == n_dry
    assert sum(rec.getMessage() == DRY_RUN_MARKER for rec in caplog.records) == n_dry


def test_dry_run_is_resolved_once_in_the_config(tmp_path):
    cfg = DaemonConfig(interval_seconds=60, journal_path=tmp_path / "j.sqlite", groups=[group()])
    assert cfg.dry_run is False and cfg.with_dry_run(False) is cfg and cfg.with_dry_run(True).dry_run is True
    on = DaemonConfig(interval_seconds=60, journal_path=tmp_path / "j.sqlite", groups=[group()], dry_run=True)
    assert on.with_dry_run(False).dry_run is True  # the flag turns dry-run on, never off


def test_backend_errors_are_counted_and_the_daemon_goes_on(tmp_path):
    b = FlakyBackend()
    d = make(
        tmp_path, groups=[group(), group("api")], sources=[FakeSource(), FakeSource(2.0)], backends=[b, FlakyBackend()]
    )
    b.fail_read = True
    assert d.run_tick() == "partial"
    b.fail_read, b.fail_write = False, True
    assert d.run_tick() == "partial"
    b.fail_write = False
    assert d.run_tick() == "ok"
    d.close()
    assert metric(d, "fleetpilot_backend_errors_total", group="web") == 2
    assert [x["outcome"] for x in rows(tmp_path, "web")][:2] == ["error", "error"]
    assert [x["outcome"] for x in rows(tmp_path, "api")][0] == "written"  # the other group was not affected


def test_a_failing_tick_is_logged_counted_and_survived(tmp_path, caplog):
    d = make(tmp_path)
    d.journal.commit = lambda: (_ for _ in ()).throw(OSError("disk full"))
    with caplog.at_level(logging.ERROR):
        assert d.run_tick() == "error"
    assert any(r.getMessage() == "tick failed" for r in caplog.records)
    del d.journal.commit
    assert d.run_tick() == "ok"
    assert metric(d, "fleetpilot_ticks_total", outcome="error") == 1
    assert metric(d, "fleetpilot_ticks_total", outcome="ok") == 1
    assert d.readyz()[0] and d.healthz()[0]
    d.close()


def test_metrics_per_group(tmp_path):
    d = make(tmp_path)
    d.run_tick()
    d.close()
    assert (
        metric(d, "fleetpilot_load_tpm", group="web") == rows(tmp_path)[0]["load_tpm"] == FakeSource().load(START - 1)
    )
    assert metric(d, "fleetpilot_machines", group="web", state="active") == 50
    desired = metric(d, "fleetpilot_machines", group="web", state="desired")
    assert desired == rows(tmp_path)[0]["final"]
    total = sum(
        metric(d, "fleetpilot_decisions_total", group="web", direction=x, reason=r)
        for x in ("up", "down", "none")
        for r in ("policy", "scale-in-limit", "scale-out-limit")
    )
    assert total == 1 and metric(d, "fleetpilot_tick_duration_seconds_count") == 1


def test_groups_sharing_a_policy_are_one_batch(tmp_path):
    groups = [
        group("a"),
        group("b"),
        group("c", policy="static", policy_params={"machines": 7}),
        group("d", warmup_minutes=3),
    ]
    d = make(tmp_path, groups=groups)
    assert sorted(len(b.groups) for b in d.batches) == [1, 1, 2]
    d.run_tick()
    d.close()
    assert rows(tmp_path, "c")[0]["policy_desired"] == 7


def test_an_injected_policy_serves_its_batch_and_only_one(tmp_path):
    class Fixed(Policy):
        name = "fixed"

        def reset(self, n):
            self.n = n

        def decide(self, obs):
            return PolicyOutput(np.full(obs.n, 9), np.full(obs.n, 9))

    fixed = Fixed()
    d = make(tmp_path, groups=[group("a"), group("b")], policies={"target-tracking": fixed})
    assert fixed.n == 2 and d.batches[0].policy is fixed
    d.run_tick()
    d.close()
    assert [r["policy_desired"] for r in rows(tmp_path)] == [9, 9]
    with pytest.raises(ValueError, match="several batches"):
        make(tmp_path, groups=[group("a"), group("b", warmup_minutes=3)], policies={"target-tracking": Fixed()})


def test_restarted_daemon_sees_the_same_observations(tmp_path):
    """One daemon runs 300 minutes; a second starts at minute 200 with backfilled history: from its first tick
    on, both build the same observations."""

    class Spy(Policy):
        name = "spy"

        def __init__(self):
            self.features = {}

        def reset(self, n):
            pass

        def decide(self, obs):
            self.features[int(obs.minute[0])] = obs.features.copy()
            return PolicyOutput(obs.total.copy(), obs.total.copy())

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    spy_a, spy_b = Spy(), Spy()
    a = make(
        tmp_path / "a",
        clock=FakeClock(START),
        sources=[FakeSource(history_minutes=None)],
        policies={"target-tracking": spy_a},
    )
    for _ in range(300):
        a.run_tick()
    a.close()
    b = make(
        tmp_path / "b",
        clock=FakeClock(START + 200),
        sources=[FakeSource(history_minutes=None)],
        policies={"target-tracking": spy_b},
    )
    for _ in range(100):
        b.run_tick()
    b.close()
    assert len(spy_b.features) == 100
    for m, f in spy_b.features.items():
        np.testing.assert_allclose(f, spy_a.features[m], rtol=1e-6, atol=1e-6)


def test_stabilization_window_survives_a_restart(tmp_path):
    d = make(tmp_path, groups=[group(scale_in_stabilization_minutes=10)])
    for _ in range(3):
        d.run_tick()
    d.close()
    d2 = make(tmp_path, groups=[group(scale_in_stabilization_minutes=10)], clock=FakeClock(START + 3))
    assert len(d2.groups[0].memory.recommendations) == 3
    d2.close()


def test_journal_rows_explain_each_decision(tmp_path):
    d = make(tmp_path)
    d.run_tick()
    d.close()
    db = sqlite3.connect(tmp_path / "j.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    (r,) = rows(tmp_path)
    assert r["minute"] == START and r["load_minute"] == START - 1 and r["group_name"] == "web"
    assert (r["active"], r["warming"], r["desired_before"]) == (50, 0, 50)
    assert r["raw_action"] == r["policy_desired"] and r["outcome"] == "written"


class SpanSource(FakeSource):
    """A FakeSource that keeps all its history, records each history read, and fails from read `fail_at` on."""

    def __init__(self, fail_at: int | None = None):
        super().__init__(history_minutes=None)
        self.reads: list[tuple[int, int]] = []
        self.fail_at = fail_at

    def history(self, start: int, end: int):
        self.reads.append((start, end))
        if self.fail_at is not None and len(self.reads) >= self.fail_at:
            raise SourceError("connection refused")
        return super().history(start, end)


def test_a_backfill_of_many_groups_reads_spans_and_feeds_what_one_read_would(tmp_path, monkeypatch, caplog):
    """The start-up backfill reads a batch's sources a span at a time when groups x week is over
    BACKFILL_VALUES (here forced with 3 groups): contiguous spans over the week, the same builder state as one
    read of the week, and a source that fails on its second span is logged once, not read again, and keeps its
    first span."""
    from fleetpilot.controller import runtime
    from fleetpilot.policies.observation import HISTORY_MINUTES

    names = [group("a"), group("b"), group("c")]
    whole = make(tmp_path / "whole", groups=names, sources=[SpanSource(), SpanSource(), SpanSource()])
    assert [len(s.reads) for s in (g.source for g in whole.groups)] == [1, 1, 1]  # a week at once
    monkeypatch.setattr(runtime, "BACKFILL_VALUES", 3 * 3000)
    sources = [SpanSource(), SpanSource(), SpanSource(fail_at=2)]
    with caplog.at_level(logging.WARNING):
        spans = make(tmp_path / "spans", groups=names, sources=sources)
    start, end = START - HISTORY_MINUTES, START - 1
    assert sources[0].reads == [(m, min(m + 3000, end)) for m in range(start, end, 3000)] == sources[1].reads
    assert len(sources[0].reads) == 4 and sources[2].reads == sources[0].reads[:2]  # not read after it failed
    failed = [r for r in caplog.records if r.getMessage().startswith("history backfill failed")]
    assert [(r.group, r.from_minute) for r in failed] == [("c", start + 3000)]
    assert metric(spans, "fleetpilot_source_errors_total", group="c", kind="error") == 1
    a, b = whole.batches[0].builder, spans.batches[0].builder
    assert b.count.tolist() == [a.count[0], a.count[1], 3000] and a.count[0] == HISTORY_MINUTES - 1
    np.testing.assert_array_equal(b.observation().features[:2], a.observation().features[:2])
    np.testing.assert_array_equal(b.rise.counts[:2], a.rise.counts[:2])


def test_history_is_fed_a_day_at_a_time_as_it_would_be_minute_by_minute(tmp_path):
    """`Batch.feed_history` builds its (groups x minutes) matrix a day at a time: over several days, with holes,
    a group whose history starts late and ends early, a minute given twice (the later sample wins) and a group
    without any, the builder ends as one fed minute by minute."""
    from fleetpilot.controller.runtime import FEED_BLOCK_MINUTES, NO_HISTORY, Batch, History, read_history
    from fleetpilot.policies.observation import ObservationBuilder

    d = make(tmp_path, groups=[group("a"), group("b"), group("c")])
    live = d.batches[0]
    b = Batch(live.spec, live.params, live.warmup_minutes, live.groups, live.fallbacks)
    rng = np.random.default_rng(3)
    t0, span = START, 3 * FEED_BLOCK_MINUTES + 77
    ma = np.arange(t0, t0 + span)
    ma = ma[rng.random(ma.size) > 0.1]  # holes
    mb = np.arange(t0 + FEED_BLOCK_MINUTES - 5, t0 + 2 * FEED_BLOCK_MINUTES + 9)
    la, lb = rng.uniform(100, 900, ma.size), rng.uniform(100, 900, mb.size)

    class Twice(MetricSource):  # b's source: its first minute twice (the later value counts), out of order
        def latest(self, now_minute):
            return None

        def history(self, start, end):
            samples = [Sample(int(m), float(x)) for m, x in zip(mb, lb, strict=True)]
            return [Sample(int(mb[0]), 1.0)] + samples[5:] + samples[:5]

    hb = read_history(Twice(), int(mb[0]), int(mb[-1]) + 1, live.groups[1].limits)
    assert hb.start == mb[0] and hb.loads.tolist() == lb.tolist()
    ha = History.of(dict(zip(ma.tolist(), la, strict=True)))
    assert ha.samples == ma.size and np.isnan(ha.loads).sum() == ma[-1] - ma[0] + 1 - ma.size  # the holes
    b.feed_history([ha, hb, NO_HISTORY])

    ref = ObservationBuilder(3, b.builder.cap, live.warmup_minutes)
    at_a, at_b = dict(zip(ma.tolist(), la, strict=True)), dict(zip(mb.tolist(), lb, strict=True))
    zeros = np.zeros(3, dtype=np.int64)
    for m in range(t0, t0 + span):
        has = np.array([m in at_a, m in at_b, False])
        if has.any():
            load = np.array([at_a.get(m, np.nan), at_b.get(m, np.nan), np.nan])
            ref.update_where(has, load, zeros, zeros, np.full(3, m))
    assert b.builder.count.tolist() == ref.count.tolist() and ref.count[0] > ref.count[1] > 0 == ref.count[2]
    np.testing.assert_array_equal(b.builder.observation().features, ref.observation().features)
    np.testing.assert_array_equal(b.builder.rise.counts, ref.rise.counts)
