"""Fault matrix, the process: SIGTERM in the middle of a tick, kill -9 and restart.

`fleetpilot run` runs as a subprocess against a real Prometheus server (through a proxy that makes it slow) or
moto over HTTP (through the fault proxy), or the simulator; the restart equivalence runs the real tick in
process against Prometheus and moto, with the "kill" landing between the backend write and the journal commit.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from fleetpilot.controller.config import DaemonConfig
from fleetpilot.controller.daemon import Daemon
from fleetpilot.controller.journal import read_decisions
from tests.real_servers import Fault, MotoAws, PromProxy, now_minute
from tests.test_reliability_faults import TT_PARAMS, StepClock, group, load_at, prom_source

FLEETPILOT = str(Path(sys.executable).parent / "fleetpilot")


def write_config(tmp_path: Path, groups: list[dict], **over) -> Path:
    d = {
        "interval_seconds": 60,
        "journal_path": "journal.sqlite",
        "server": {"host": "127.0.0.1", "port": 0},
        "groups": groups,
    }
    d.update(over)
    p = tmp_path / "fleetpilot.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def start(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [FLEETPILOT, "run", "--config", str(cfg), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def stop_and_check(proc: subprocess.Popen, limit_seconds: float = 20.0) -> list[dict]:
    """SIGTERM; the process must exit 0 within `limit_seconds`; returns its JSON log records. The limit is
    generous for a busy 2-core machine (the daemon itself exits within a few seconds); what it catches is a
    process that waits for its next tick or its backend retries (a minute and more)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=limit_seconds + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - t0
    err = proc.stderr.read()
    assert rc == 0, err[-3000:]
    assert took < limit_seconds, f"exit took {took:.1f} s"
    return [json.loads(line) for line in err.splitlines()]  # every line is one JSON object


def journal_rows(path: Path) -> list[dict]:
    return read_decisions(path, None, 1_000_000) if path.exists() else []


# -- SIGTERM mid-tick ---------------------------------------------------------------------------------------
def test_sigterm_mid_tick_finishes_the_tick_and_exits_0(tmp_path, prom_proxy: PromProxy):
    """The tick is blocked 2.5 s on a slow Prometheus answer when SIGTERM comes: the daemon finishes it (the
    answer arrives and is used), journals it, and exits 0 within 5 s."""
    prom_proxy.mode, prom_proxy.delay = "slow", 2.5
    cfg = write_config(tmp_path, [group(prom_source(prom_proxy.url, timeout=5))])
    proc = start(cfg)
    wait_until(lambda: prom_proxy.instant_queries >= 1 or proc.poll() is not None, 30, "the first tick's query")
    assert proc.poll() is None
    time.sleep(0.3)  # well inside the tick
    recs = stop_and_check(proc)
    (row,) = journal_rows(tmp_path / "journal.sqlite")
    assert row["data_status"] == "ok" and row["load_tpm"] == load_at(row["load_minute"])  # the tick was finished
    msgs = [r["msg"] for r in recs]
    assert "signal received; finishing the current tick" in msgs and msgs[-1] == "stopped"
    assert recs[-1]["ticks"] == 1


def test_sigterm_during_backend_retries_exits_within_5_s(tmp_path, prometheus_server, aws: MotoAws, fault_proxy):
    """The write is throttled and the backend is in its backoff (10 retries from 1 s: over a minute) when
    SIGTERM comes: the retries stop, the tick is journaled as a failed write, the group is untouched."""
    name = aws.create_group(min_size=1, max_size=60, desired=50)
    proxy = fault_proxy(Fault("SetDesiredCapacity", "Throttling", times=-1, message="Rate exceeded"))
    backend = {
        "kind": "ec2-asg",
        "group_name": name,
        "region": aws.region,
        "endpoint_url": proxy.url,
        "max_retries": 10,
        "retry_base_seconds": 1.0,
    }
    cfg = write_config(tmp_path, [group(prom_source(prometheus_server.url), backend, max_machines=60)])
    proc = start(cfg)
    wait_until(lambda: proxy.count("SetDesiredCapacity") >= 2 or proc.poll() is not None, 30, "a retried write")
    assert proc.poll() is None
    recs = stop_and_check(proc)
    (row,) = journal_rows(tmp_path / "journal.sqlite")
    assert row["outcome"] == "error" and row["final"] == 40
    assert aws.group(name)["DesiredCapacity"] == 50
    (failed,) = [r for r in recs if r["msg"] == "backend write failed"]
    assert "shutting down" in failed["error"]


# -- kill -9 ------------------------------------------------------------------------------------------------
def test_kill_9_leaves_a_consistent_journal_and_a_restart_appends_to_it(tmp_path):
    groups = [
        {
            "name": n,
            "policy": "target-tracking",
            "source": {"kind": "simulator", "seed": i},
            "backend": {"kind": "simulated", "seed": i},
        }
        for i, n in enumerate(("web", "api"))
    ]
    cfg = write_config(tmp_path, groups, interval_seconds=0.01)
    path = tmp_path / "journal.sqlite"

    def ticks() -> int:
        if not path.exists():
            return 0
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return db.execute("SELECT count(DISTINCT tick) FROM decisions").fetchone()[0]
        except sqlite3.OperationalError:  # the table is being created
            return 0
        finally:
            db.close()

    proc = start(cfg)
    try:
        wait_until(lambda: ticks() >= 40 or proc.poll() is not None, 30, "40 ticks")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    per_tick = db.execute(
        "SELECT tick, count(*), group_concat(group_name) FROM decisions GROUP BY tick ORDER BY tick"
    ).fetchall()
    db.close()
    n = len(per_tick)
    assert n >= 40 and [t for t, _, _ in per_tick] == list(range(n))  # no tick lost in the middle
    assert all(c == 2 and sorted(g.split(",")) == ["api", "web"] for _, c, g in per_tick)  # no half tick

    proc = start(cfg)
    wait_until(lambda: len(journal_rows(path)) >= 2 * n + 10 or proc.poll() is not None, 30, "the restart's ticks")
    stop_and_check(proc)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] >= 2 * n + 10
    assert db.execute("SELECT count(*) FROM decisions WHERE id <= ?", (2 * n,)).fetchone()[0] == 2 * n  # kept


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even `except Exception`)."""


def _falling_start() -> int:
    """A minute from which LOAD_QUERY falls steeply (15 tpm a minute or more) for the next 40 minutes, so scale-in
    stabilization binds whatever the wall clock's phase (near the peak the load falls too slowly for it)."""
    for m in range(now_minute() - 1500, now_minute() - 500):
        if all(load_at(m + k + 1) <= load_at(m + k) - 15 for k in range(40)) and load_at(m) > 5000:
            return m
    raise AssertionError("no falling stretch")  # pragma: no cover - the load is periodic (565 minutes)


def test_restart_after_kill_decides_as_an_uninterrupted_run(tmp_path, prometheus_server, aws: MotoAws, fault_proxy):
    """Daemon A is killed at minute S+15 after its decision (and its write, if the decision changed the group)
    and before its journal commit; daemon B starts on the same journal and group at S+16 (history backfilled
    from Prometheus, stabilization window from the journal and its write-ahead of recommendations). From then on B decides exactly as daemon U, which never stopped (own group and journal), and
    writes the group exactly as often as U did: no duplicate, no contradicting write."""
    s = _falling_start()
    # no scale-in tolerance: target tracking then steps down a machine every <= 13 minutes on this stretch
    # (195 tpm a machine), and each step is held by the window for 10, so it binds among B's 14 ticks whatever
    # the wall clock's phase; with the 0.1 tolerance the first step could come after s + 29 (about 1 phase in 130)
    kw = dict(
        max_machines=60,
        scale_in_stabilization_minutes=10,
        max_scale_in_per_tick=3,
        policy_params={**TT_PARAMS, "scale_in_tolerance": 0.0},
    )

    def make(journal: str, name: str, proxy_url: str, minute: int) -> Daemon:
        backend = {
            "kind": "ec2-asg",
            "group_name": name,
            "region": aws.region,
            "endpoint_url": proxy_url,
            "max_retries": 1,
            "retry_base_seconds": 0.01,
        }
        cfg = DaemonConfig(
            interval_seconds=60,
            journal_path=tmp_path / journal,
            groups=[group(prom_source(prometheus_server.url), backend, **kw)],
        )
        d = Daemon(cfg, CollectorRegistry(), clock=StepClock(minute))
        d.backfill()
        return d

    g_u, g_r = aws.create_group(1, 60, 50), aws.create_group(1, 60, 50)
    p_u, p_r = fault_proxy(), fault_proxy()
    u = make("u.sqlite", g_u, p_u.url, s)
    desired_u = []
    for _ in range(30):
        assert u.run_tick() == "ok"
        desired_u.append(aws.group(g_u)["DesiredCapacity"])
    u.close()

    a = make("r.sqlite", g_r, p_r.url, s)
    for _ in range(15):
        assert a.run_tick() == "ok"

    def killed():
        raise Killed()

    a.journal.commit = killed
    with pytest.raises(Killed):
        a.run_tick()  # minute s+15: written to the group, never journaled
    assert aws.group(g_r)["DesiredCapacity"] == desired_u[15]
    # abandoned, not closed; the kill also releases the dead process's flock on the journal (one writer per
    # journal): done here by hand, since daemon A lives in this process
    os.close(a.journal._lock_fd)
    a.journal._lock_fd = -1
    del a

    b = make("r.sqlite", g_r, p_r.url, s + 16)
    assert b.batches[0].builder.count[0] > 10_000  # a week of history backfilled
    for _ in range(14):
        assert b.run_tick() == "ok"
    b.close()

    ru = read_decisions(tmp_path / "u.sqlite", "web", 1000)
    rr = read_decisions(tmp_path / "r.sqlite", "web", 1000)
    assert [r["minute"] for r in rr] == list(range(s, s + 15)) + list(range(s + 16, s + 30))
    keys = ("load_tpm", "active", "desired_before", "policy_desired", "recommendation", "guards", "final", "outcome")
    for x, y in zip(ru[:15] + ru[16:], rr, strict=False):
        assert {k: x[k] for k in keys} == {k: y[k] for k in keys}, (x, y)
    assert any("stabilization" in r["guards"] for r in rr[15:])  # the restored window mattered
    assert p_r.count("SetDesiredCapacity") == p_u.count("SetDesiredCapacity") > 0
    assert aws.group(g_r)["DesiredCapacity"] == desired_u[-1]
