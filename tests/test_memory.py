"""Daemon memory at 10,000 groups (issue 13): the history and the status rings in files (policies.rowstore) give
the same values as in memory, the process keeps only a few rows of them resident, the per-group metrics expose
what prometheus_client's metrics expose. Bounds are computed from array sizes, never from timing or VmRSS."""

from __future__ import annotations

import logging
import math
import mmap
import re
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from fleetpilot.controller.journal import JournalRow
from fleetpilot.controller.metrics import GroupSeries, Metrics
from fleetpilot.controller.status import GroupInfo, StatusBoard
from fleetpilot.controller.status_page import groups_data
from fleetpilot.policies.forecast import Forecaster
from fleetpilot.policies.observation import WEEK_MINUTES, ObservationBuilder
from fleetpilot.policies.rowstore import RowStore

PAGE = mmap.PAGESIZE


# --- RowStore ---------------------------------------------------------------------------------------------
def test_rowstore_in_a_file_holds_the_values_and_releases_its_pages(tmp_path: Path):
    mem = RowStore(300, 1000, np.float32, np.nan)
    f = RowStore(300, 1000, np.float32, np.nan, directory=tmp_path)
    assert f.in_file and not mem.in_file
    assert list(tmp_path.iterdir()) == []  # an unnamed file: nothing to clean up, nothing to collide with
    rng = np.random.default_rng(0)
    for r in range(0, 300, 7):
        v = rng.uniform(0, 1e6, 1000).astype(np.float32)
        mem.array[r] = v
        f.array[r] = v
    assert f.resident_bytes() > 0
    f.release()
    assert f.resident_bytes() == 0
    assert mem.array.tobytes() == f.array.tobytes()  # NaN fill and written rows alike, read back from the file
    assert f.resident_bytes() == -(-f.array.nbytes // PAGE) * PAGE  # reading everything maps every page in
    f.release()
    assert f.resident_bytes() == 0


def test_rowstore_falls_back_to_memory_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    missing = tmp_path / "no" / "such" / "dir"
    with caplog.at_level(logging.WARNING, logger="fleetpilot"):
        a = RowStore(10, 4, np.int32, -1, directory=missing)
        b = RowStore(10, 4, np.int32, -1, directory=missing)
    assert not a.in_file and not b.in_file
    assert (a.array == -1).all()
    warned = [r for r in caplog.records if "stay in memory" in r.getMessage()]
    assert len(warned) == 1 and str(missing) == warned[0].directory


# --- the observation builder --------------------------------------------------------------------------------
def _drive(builders: list[ObservationBuilder], minutes: int, seed: int):
    """Feed the builders the same (N, minutes) loads with gaps, repeats, partial updates and resets; yield after
    each minute."""
    n = builders[0].n
    rng = np.random.default_rng(seed)
    base = rng.uniform(100, 5e4, n)
    minute = np.full(n, 28_000_000) + rng.integers(0, 3, n)
    for t in range(minutes):
        load = base * (1 + 0.5 * np.sin(t / 200)) * (1 + rng.normal(0, 0.05, n)) + (rng.random(n) < 0.003) * base
        load = np.maximum(load, 0).round(int(rng.choice([0, 3])))
        act, war = rng.integers(1, 50, n), rng.integers(0, 5, n)
        r = rng.random()
        minute = minute + (rng.integers(2, 40, n) if r < 0.005 else rng.integers(0, 2, n) if r < 0.007 else 1)
        if rng.random() < 0.001:
            rows = rng.choice(n, max(1, n // 3), replace=False)
            for b in builders:
                b.reset(rows)
        take = rng.random(n) < 0.7 if rng.random() < 0.02 else None
        for b in builders:
            if take is None:
                b.update(load, act, war, minute)
            else:
                b.update_where(take, load, act, war, minute)
        yield t


def test_builder_with_its_history_in_a_file_gives_the_same_features(tmp_path: Path):
    """More than a week of minutes (the ring wraps), with gaps, refused repeats, partial updates and resets: the
    features, the history reads and a forecast are the same bytes as with the history in memory."""
    n = 4
    mem = ObservationBuilder(n, np.array([100.0, 250.0, 300.0, 1000.0]), 5)
    f = ObservationBuilder(n, mem.cap.copy(), 5, directory=tmp_path)
    assert f.store.in_file
    forecaster = Forecaster(5)
    checked = 0
    for t in _drive([mem, f], WEEK_MINUTES + 600, seed=3):
        if t % 11 and t < WEEK_MINUTES + 500:
            continue
        a, b = mem.observation(), f.observation()
        assert a.features.tobytes() == b.features.tobytes(), t
        assert (a.jump_age_minutes == b.jump_age_minutes).all() and (a.rerise_age_minutes == b.rerise_age_minutes).all()
        if t % 1000 == 0:
            assert np.array_equal(a.history.lags(0, 3000), b.history.lags(0, 3000))
            assert a.history.window_mean(WEEK_MINUTES - 7, WEEK_MINUTES - 3).tobytes() == (
                b.history.window_mean(WEEK_MINUTES - 7, WEEK_MINUTES - 3).tobytes()
            )
            assert forecaster.forecast(a.history).point.tobytes() == forecaster.forecast(b.history).point.tobytes()
        checked += 1
    assert mem.count.max() > WEEK_MINUTES  # the week features were on
    assert (mem.jump_age < 1000).any()  # and the jump detector fired
    assert checked > 900


def test_builder_at_10000_groups_keeps_a_few_rows_resident(tmp_path: Path):
    """10,000 groups, two hours of minutes (the fresh fill writes every row of the week): the history file's
    resident pages stay within what one minute reads (the jump window, lags 1..5, three 5-minute seasonal
    windows: under 64 rows), and the builder's own arrays are a few dozen numbers a group."""
    n = 10_000
    b = ObservationBuilder(n, 300.0, 5, directory=tmp_path)
    row = 4 * n
    bound = 64 * (row + PAGE)
    rng = np.random.default_rng(0)
    worst = 0
    for t in range(120):
        b.update(rng.uniform(0, 1e5, n), np.full(n, 10), np.zeros(n), np.full(n, 28_000_000 + t))
        worst = max(worst, b.store.resident_bytes())
        obs = b.observation()
        obs.history.window_mean(0, 29)  # a policy's read: mapped in until the next update
        worst = max(worst, b.store.resident_bytes())
    assert 0 < worst <= bound, (worst, bound)
    assert b.store.array.nbytes > 100 * bound  # the week is in the file
    own = sum(v.nbytes for v in vars(b).values() if isinstance(v, np.ndarray) and v is not b.buf)
    assert own <= 40 * 8 * n, own


# --- the status board ---------------------------------------------------------------------------------------
def _info(name: str, shadows: tuple[str, ...] = ()) -> GroupInfo:
    return GroupInfo(name, "default", "target-tracking", False, 1, 100, 300.0, 5, "simulator", "simulated", shadows)


def _row(name: str, minute: int, rng: np.random.Generator) -> JournalRow:
    bad = rng.random() < 0.1
    final = None if rng.random() < 0.05 else int(rng.integers(1, 90))
    return JournalRow(
        wall_time=f"2026-01-01T00:{minute % 60:02d}:00+00:00",
        tick=minute,
        minute=minute,
        group_name=name,
        policy="default",
        action=str(rng.choice(["policy", "fallback", "hold"])),
        data_status="nan" if bad else "ok",
        load_tpm=None if bad else float(rng.uniform(0, 1e5)),
        load_minute=minute - 1,
        active=int(rng.integers(1, 80)),
        warming=int(rng.integers(0, 5)),
        desired_before=int(rng.integers(1, 80)),
        raw_action=int(rng.integers(0, 9)),
        policy_desired=final,
        fallback_desired=None,
        recommendation=None,
        guards=list(rng.choice(["cooldown", "max_step", "min"], int(rng.integers(0, 3)))),
        final=final,
        outcome=str(rng.choice(["written", "unchanged"])),
    )


def test_status_board_in_files_answers_as_in_memory(tmp_path: Path):
    """Minutes with gaps and a clock that goes back, forecasts, shadows: the JSON twin (every group and each
    group) is the same from rings in files as from rings in memory."""
    groups = [_info("a"), _info("b", ("target-tracking", "default")), _info("c", ("default",))]
    mem = StatusBoard(groups, minutes=120, decisions=7)
    f = StatusBoard(groups, minutes=120, decisions=7, directory=tmp_path)
    rng = np.random.default_rng(1)
    minute = 28_000_000
    for t in range(400):
        minute += 1 if t % 37 else int(rng.integers(2, 30))
        if t == 250:
            minute -= 500  # the clock went back: the rings restart
        rows = [_row(g.name, minute, rng) for g in groups]
        forecast = rng.uniform(0, 1e5, 3) if t > 50 else None
        shadows = {1: (int(rng.integers(1, 50)), None), 2: (int(rng.integers(1, 50)),)} if t % 3 else {}
        for b in (mem, f):
            b.record(minute, rows, forecast, shadows)
        if t % 97 == 0 or t == 399:
            for only in (None, 0, 1, 2):
                assert groups_data(mem, only) == groups_data(f, only), (t, only)
    assert groups_data(f, 1)["groups"][0]["series"]["shadows"]  # the shadows were shown
    assert f.resident_bytes() == 0  # every page released after the tick and the reads
    assert mem.nbytes() == f.nbytes()


def test_status_board_at_10000_groups_keeps_nothing_resident_between_ticks(tmp_path: Path):
    n = 10_000
    board = StatusBoard([_info(f"g{i}") for i in range(n)], directory=tmp_path)
    rng = np.random.default_rng(2)
    rows = [_row(f"g{i}", 28_000_000, rng) for i in range(n)]
    for t in range(3):
        board.record(28_000_000 + t, rows)
        assert board.resident_bytes() == 0
    assert board.nbytes() >= 1440 * n * 16  # a day of load, active, warming, desired: in the files
    snap = board.snapshot([5, 6], 1)
    assert snap["series"]["load_tpm"].shape == (2, 1440)
    assert board.resident_bytes() == 0


# --- metrics ------------------------------------------------------------------------------------------------
def _exposition(registry: CollectorRegistry) -> str:
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", generate_latest(registry).decode())


def test_group_series_expose_what_prometheus_client_metrics_expose():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    g1 = GroupSeries("x_machines", "Machines", ["group", "state"], "gauge", ours)
    c1 = GroupSeries("x_decisions", "Decisions", ["group", "reason"], "counter", ours)
    e1 = GroupSeries("x_unused", "Never set", ["group"], "counter", ours)
    g2 = Gauge("x_machines", "Machines", ["group", "state"], registry=theirs)
    c2 = Counter("x_decisions", "Decisions", ["group", "reason"], registry=theirs)
    Counter("x_unused", "Never set", ["group"], registry=theirs)
    for g in (g1, g2):
        g.labels("web", "active").set(3)
        g.labels('api\n"x"', "desired").set(7.5)
    for c in (c1, c2):
        c.labels("web", "policy").inc()
        c.labels("web", "policy").inc(2)
        c.labels("api", "hold").inc(0)
    assert _exposition(ours) == _exposition(theirs)
    assert ours.get_sample_value("x_decisions_total", {"group": "web", "reason": "policy"}) == 3
    created = ours.get_sample_value("x_decisions_created", {"group": "web", "reason": "policy"})
    assert created is not None and math.isfinite(created)
    assert e1.series == {}
    with pytest.raises(ValueError):
        c1.labels("web", "policy").inc(-1)
    with pytest.raises(ValueError):
        c1.labels("web")


def test_metrics_children_of_group_series_are_cached_series():
    m = Metrics(CollectorRegistry())
    m.init_group("web")
    child = m.child(m.machines, "web", "active")
    assert child is m.child(m.machines, "web", "active") is m.machines.labels("web", "active")
    child.set(4)
    assert m.registry.get_sample_value("fleetpilot_machines", {"group": "web", "state": "active"}) == 4
    assert m.registry.get_sample_value("fleetpilot_backend_errors_total", {"group": "web"}) == 0
