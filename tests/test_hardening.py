"""Hardening (issue 15): what an adversarial or careless operator broke, each pinned by a test that failed first.

1. absurd finite loads: capacity arithmetic saturates, an implausible reading is bad data, no scale-in;
   the config is bounded to what the backend and the journal can store;
2. the journal: rows of a write that happened are never lost; one writer per journal;
3. credentials never reach a log (URL userinfo, query tokens, echoed Authorization headers);
4. the model manifest is validated before anything else;
5. `config check` and `run` refuse the same journal and model paths with the same line;
6. inputs that hang or flood (FIFOs, /dev/zero, huge fields; idle sockets on the metrics server);
7. duplicate YAML keys are refused; a trace with a UTF-8 byte-order mark is accepted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from fleetpilot.controller import guards
from fleetpilot.controller.config import ConfigError, load_config
from fleetpilot.controller.daemon import Daemon
from fleetpilot.controller.journal import read_decisions
from fleetpilot.policies.actions import ActionMapping
from fleetpilot.policies.observation import ObservationBuilder
from fleetpilot.policies.registry import make_policy
from tests.journal_rows import journal_row

FLEETPILOT = str(Path(sys.executable).parent / "fleetpilot")
INT64_MIN = int(np.iinfo(np.int64).min)


def cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([FLEETPILOT, *args], capture_output=True, text=True, timeout=timeout, **kw)


def one_line_exit_2(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def sim_config(tmp_path: Path, **group) -> dict:
    g = {
        "name": "web",
        "policy": "target-tracking",
        "min_machines": 1,
        "max_machines": 100,
        "source": {"kind": "simulator", "seed": 0},
        "backend": {"kind": "simulated", "seed": 0, "initial_machines": 30},
    }
    g.update(group)
    return {"interval_seconds": 0.05, "journal_path": "j.sqlite", "server": {"port": 0}, "groups": [g]}


def write_yaml(tmp_path: Path, data: dict, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


# --- 1. absurd finite loads ---------------------------------------------------------------------------------
def _obs(load: float, n_active: int = 30):
    b = ObservationBuilder(1, np.array([300.0]), 5)
    with np.errstate(over="ignore"):  # the builder keeps float32 history: 1e300 is +inf there, as it may be
        for m in range(10):
            b.update(np.array([load]), np.array([n_active]), np.array([0]), np.array([1000 + m]))
    return b.observation()


@pytest.mark.parametrize("load", [2.5e21, 1e22, 1e300, 1.7e308])
@pytest.mark.parametrize("spec", ["target-tracking", "step", "predictive", "cushion"])
def test_rule_capacity_arithmetic_saturates_instead_of_wrapping(spec, load):
    pol = make_policy(spec)
    pol.reset(1)
    out = pol.decide(_obs(load))
    assert out.desired.dtype == np.int64 and int(out.desired[0]) >= 30, out.desired


def test_action_mapping_saturates_instead_of_wrapping():
    m = ActionMapping()
    obs = _obs(1e22)
    for k in range(m.n):
        assert int(m.desired(np.array([k]), obs)[0]) >= 30


@pytest.mark.parametrize(
    "spec, params",
    [
        ("step", {"scale_out_steps": [[0.5, 1e300]]}),
        ("target-tracking", {"target_utilization": 1e-300}),
        ("cushion", {"utilization": 1e-300}),
        ("static", {"machines": 10**20}),
    ],
)
def test_rule_parameters_that_overflow_capacity_are_refused(spec, params):
    from fleetpilot.policies.registry import PolicyError

    with pytest.raises(PolicyError):
        make_policy(spec, params)


@pytest.mark.parametrize("policy_desired, fallback_desired", [(INT64_MIN, None), (None, INT64_MIN), (-1, -5)])
def test_no_guard_turns_an_impossible_action_into_a_scale_in(policy_desired, fallback_desired):
    limits = guards.Limits(min_machines=2, max_machines=100, max_scale_out_per_tick=10, max_scale_in_per_tick=10)
    now = guards.GroupNow(active=30, warming=0, desired=30)
    prop = guards.Proposal(policy_desired, fallback_desired, guards.DATA_OK, None if policy_desired else "non_finite")
    d, _ = guards.decide(guards.Memory(), now, prop, limits, 100)
    assert d.final == 30 and d.action == "hold" and not d.write, d


def _spike_trace(tmp_path: Path) -> Path:
    lines = ["timestamp,requests"]
    for m in range(120):
        v = 1e22 if 40 <= m < 70 else 6000
        lines.append(f"2026-01-05T{m // 60:02d}:{m % 60:02d}:00Z,{v:g}")
    p = tmp_path / "spike.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("policy", ["target-tracking", "default"])
def test_an_absurd_load_spike_is_bad_data_and_never_scales_in(tmp_path, policy):
    trace = _spike_trace(tmp_path)
    data = sim_config(tmp_path, policy=policy, source={"kind": "csv", "path": str(trace)})
    cfg = load_config(write_yaml(tmp_path, data))
    d = Daemon(cfg, CollectorRegistry())
    d.backfill()
    for _ in range(100):
        d.run_tick()
    d.close()
    rows = read_decisions(tmp_path / "j.sqlite", "web", 1000)
    spike = [r for r in rows if r["load_minute"] is not None and 40 <= r["load_minute"] - rows[0]["load_minute"] < 70]
    assert len(spike) == 30
    for r in spike:
        assert r["data_status"] == "implausible", r
        assert r["final"] >= r["desired_before"], r
        assert not any(x in ("min-machines", "scale-in-limit") for x in r["guards"]), r
    assert d.registry.get_sample_value(
        "fleetpilot_source_errors_total", {"group": "web", "kind": "implausible"}
    ) == pytest.approx(30)


def test_a_configured_load_ceiling_flags_readings_above_it(tmp_path):
    data = sim_config(tmp_path, max_load_tpm=5000.0, source={"kind": "csv", "path": str(_spike_trace(tmp_path))})
    cfg = load_config(write_yaml(tmp_path, data))
    assert cfg.groups[0].max_load_tpm == 5000.0
    d = Daemon(cfg, CollectorRegistry())
    d.backfill()
    d.run_tick()
    d.close()
    assert read_decisions(tmp_path / "j.sqlite", "web", 1)[0]["data_status"] == "implausible"  # 6,000 > 5,000


@pytest.mark.parametrize(
    "field, value",
    [
        ("min_machines", 10**20),
        ("max_machines", 10**20),
        ("max_scale_out_per_tick", 10**20),
        ("max_scale_in_per_tick", 10**20),
        ("capacity_tpm_per_machine", 1e300),
    ],
)
def test_config_is_bounded_to_what_the_backend_and_journal_can_store(tmp_path, field, value):
    group = {field: value}
    if field == "min_machines":
        group["max_machines"] = value
    p = write_yaml(tmp_path, sim_config(tmp_path, **group))
    with pytest.raises(ConfigError, match=rf"groups\[0\]\.{field}: "):
        load_config(p)


def test_min_max_1e20_is_refused_by_config_check_and_run(tmp_path):
    p = write_yaml(tmp_path, sim_config(tmp_path, min_machines=10**20, max_machines=10**20))
    a = one_line_exit_2(cli("config", "check", str(p)), "groups[0].min_machines")
    b = one_line_exit_2(cli("run", "--config", str(p), "--once", "--quiet"), "groups[0].min_machines")
    assert a.split("error: ", 1)[1] == b.split("error: ", 1)[1]


# --- 2. the journal: no lost rows, one writer ---------------------------------------------------------------
def _tick_daemon(tmp_path: Path, journal=None) -> Daemon:
    cfg = load_config(write_yaml(tmp_path, sim_config(tmp_path)))
    d = Daemon(cfg, CollectorRegistry(), journal=journal)
    d.backfill()
    return d


def test_rows_of_a_written_decision_survive_a_locked_journal(tmp_path):
    """Another process holds the SQLite file locked through a tick that writes the group: the tick fails, its
    rows are kept and committed on the next tick; no written decision is without its row."""
    import sqlite3

    from fleetpilot.controller.journal import Journal

    d = _tick_daemon(tmp_path, Journal(tmp_path / "j.sqlite", busy_timeout_seconds=0.1))
    assert d.run_tick() == "ok"  # 30 machines at a load of ~1,500 tpm: target tracking scales in
    other = sqlite3.connect(tmp_path / "j.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    before = d.groups[0].backend.desired
    assert d.run_tick() == "error"
    written = d.groups[0].backend.desired
    other.execute("ROLLBACK")
    other.close()
    assert d.run_tick() == "ok"
    d.close()
    rows = read_decisions(tmp_path / "j.sqlite", "web", 100)
    assert [r["tick"] for r in rows] == [0, 1, 2]
    assert rows[1]["desired_before"] == before and rows[1]["final"] == written
    assert d.registry.get_sample_value("fleetpilot_journal_errors_total", {"kind": "commit"}) == 1
    # the write-ahead of that tick's recommendations failed too, and the tick went on to its decision
    assert d.registry.get_sample_value("fleetpilot_journal_errors_total", {"kind": "intend"}) == 1


def test_recommendations_written_ahead_outlive_a_missing_commit_and_the_commit_clears_them(tmp_path):
    """`intend` commits a tick's recommendations on its own: a process that dies before `commit` leaves them
    to the next one's stabilization window; the decision rows' commit removes them in the same transaction."""
    import sqlite3

    from fleetpilot.controller.journal import Journal

    path = tmp_path / "j.sqlite"
    # a process that dies (no commit, no close) between its write-ahead and its journal commit
    code = (
        "import os, sys; from fleetpilot.controller.journal import Journal; "
        "Journal(sys.argv[1]).intend([('web', 7, 35), ('api', 7, 4)]); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    j = Journal(path)
    assert j.recent_recommendations("web", 0) == [(7, 35)]
    assert j.recent_recommendations("web", 7) == []  # the window's lower bound is exclusive, as for decisions
    assert j.recent_recommendations("api", 0) == [(7, 4)]
    for minute, rec in ((7, 36), (8, 33)):  # a restart within the dead process's minute, then the next minute
        j.intend([("web", minute, rec)])
        j.add(journal_row("web", minute, final=rec))
        j.commit()
    # each minute now stands as a decision row, no longer as this process's write-ahead one; the dead process's
    # rows stay (even of the same minute) for a second restart within their window
    assert j.recent_recommendations("web", 0) == [(7, 35), (7, 36), (8, 33)]
    j.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT group_name, minute FROM pending_recommendations ORDER BY 1").fetchall() == [
        ("api", 7),
        ("web", 7),
    ]
    db.close()
    j = Journal(path)  # a write-ahead row older than the longest stabilization window is cleared at a commit
    j.intend([("web", 7 + 1441, 30)])
    j.commit()
    assert j.recent_recommendations("web", 0) == [(7, 36), (8, 33)]  # the decision rows only
    j.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM pending_recommendations").fetchone() == (0,)
    db.close()


def test_the_write_ahead_waits_briefly_for_a_locked_journal_and_outlives_dropped_rows(tmp_path, monkeypatch):
    """The capacity writes wait on the write-ahead: against a journal another process holds it gives up after
    INTEND_BUSY_SECONDS, not the commit's busy timeout. When commits keep failing and decision rows are dropped,
    the write-ahead rows are the only record left of those decisions: the next commit keeps them."""
    import sqlite3
    import time

    from fleetpilot.controller import journal
    from fleetpilot.controller.journal import Journal

    path = tmp_path / "j.sqlite"
    j = Journal(path, busy_timeout_seconds=30.0)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    t = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        j.intend([("web", 1, 5)])
    assert time.monotonic() - t < 10.0  # 0.2 s asked; far below the 30 s a commit would wait
    other.execute("ROLLBACK")
    other.close()
    monkeypatch.setattr(journal, "MAX_PENDING_ROWS", 2)
    j.intend([("web", 2, 5)])
    for m in (2, 3, 4):  # three rows pending (the commits "failed"): the oldest, minute 2's, is dropped
        j.add(journal_row("web", m, final=5))
    j.commit()
    assert j.recent_recommendations("web", 0) == [(2, 5), (3, 5), (4, 5)]  # minute 2 from its write-ahead row
    j.close()


def test_a_second_writer_is_refused(tmp_path):
    from fleetpilot.controller.journal import Journal, JournalError

    a = Journal(tmp_path / "j.sqlite")
    with pytest.raises(JournalError, match=r"in use by another fleetpilot .*pid \d+"):
        Journal(tmp_path / "j.sqlite")
    a.close()
    Journal(tmp_path / "j.sqlite").close()  # released on close


def test_two_daemons_started_together_on_a_new_journal_one_runs_one_refuses(tmp_path):
    import signal
    import time

    p = write_yaml(tmp_path, sim_config(tmp_path))
    procs = [
        subprocess.Popen(
            [FLEETPILOT, "run", "--config", str(p), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 30
    while all(q.poll() is None for q in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    done = [q for q in procs if q.poll() is not None]
    assert len(done) == 1, "one of the two must refuse"
    loser, winner = done[0], next(q for q in procs if q is not done[0])
    err = loser.stderr.read().decode()
    assert loser.returncode == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "in use by another fleetpilot" in err
    time.sleep(0.5)
    winner.send_signal(signal.SIGTERM)
    out = winner.communicate(timeout=20)[1].decode()
    assert winner.returncode == 0 and "Traceback" not in out, out[-2000:]
    assert len(read_decisions(tmp_path / "j.sqlite", "web", 10)) >= 1


def test_a_journal_deleted_while_running_is_noticed_and_recreated(tmp_path, caplog):
    d = _tick_daemon(tmp_path)
    d.run_tick()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'j.sqlite'}{suffix}").unlink(missing_ok=True)
    with caplog.at_level("ERROR"):
        assert d.run_tick() == "ok"
    assert any("deleted" in r.getMessage() for r in caplog.records)
    assert d.registry.get_sample_value("fleetpilot_journal_errors_total", {"kind": "deleted"}) == 1
    d.run_tick()
    d.close()
    assert [r["tick"] for r in read_decisions(tmp_path / "j.sqlite", "web", 10)] == [1, 2]


# --- 5. config check and run refuse the same journal and model paths -----------------------------------------
def _main(*argv: str, capsys) -> tuple[int, str]:
    from fleetpilot.controller.cli import main

    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def _corrupt(tmp_path: Path) -> dict:
    (tmp_path / "bad.sqlite").write_bytes(b"this is not a database, just junk bytes " * 100)
    return {"journal_path": "bad.sqlite"}


def _other_db(tmp_path: Path) -> dict:
    import sqlite3

    db = sqlite3.connect(tmp_path / "other.sqlite")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    return {"journal_path": "other.sqlite"}


def _under_a_file(tmp_path: Path) -> dict:
    (tmp_path / "afile").write_text("x")
    return {"journal_path": "afile/j.sqlite"}


def _dir(tmp_path: Path) -> dict:
    (tmp_path / "adir").mkdir()
    return {"journal_path": "adir"}


@pytest.mark.parametrize(
    "case, make, reason",
    [
        ("read-only-dir", lambda t: {"journal_path": "/proc/fleetpilot-j.sqlite"}, "not writable"),
        ("dev-full", lambda t: {"journal_path": "/dev/full"}, "not a regular file"),
        ("corrupt", _corrupt, "not an SQLite database"),
        ("other-db", _other_db, "not a fleetpilot journal"),
        ("under-a-file", _under_a_file, "not a directory"),
        ("a-directory", _dir, "is a directory"),
        ("empty-env", lambda t: {"env": ""}, "journal_path"),
        ("no-model-dir", lambda t: {"policy": "./no-such-model"}, "no such model directory"),
    ],
)
def test_config_check_and_run_refuse_the_same_paths_with_the_same_line(
    tmp_path, monkeypatch, capsys, case, make, reason
):
    monkeypatch.chdir(tmp_path)
    change = make(tmp_path)
    data = sim_config(tmp_path)
    if "env" in change:
        monkeypatch.setenv("FLEETPILOT_JOURNAL_PATH", change["env"])
    elif "policy" in change:
        data["groups"][0]["policy"] = change["policy"]
    else:
        data.update(change)
    p = write_yaml(tmp_path, data)
    rc1, err1 = _main("config", "check", str(p), capsys=capsys)
    rc2, err2 = _main("run", "--config", str(p), "--once", "--quiet", capsys=capsys)
    assert rc1 == rc2 == 2, (err1, err2)
    assert len(err1.strip().splitlines()) == 1 and reason in err1, err1
    assert err1.split("error: ", 1)[1] == err2.split("error: ", 1)[1], (err1, err2)


def test_run_refuses_a_corrupt_journal_as_a_process(tmp_path):
    data = sim_config(tmp_path)
    data.update(_corrupt(tmp_path))
    one_line_exit_2(cli("run", "--config", str(write_yaml(tmp_path, data)), "--once"), "not an SQLite database")


# --- 4. the model manifest is validated before anything else --------------------------------------------------
def _model(tmp_path: Path) -> Path:
    from tests.test_reliability_model import write_model

    return write_model(tmp_path / "model")


def _edit_manifest(d: Path, edit) -> None:
    import json

    m = json.loads((d / "manifest.json").read_text())
    out = edit(m)
    (d / "manifest.json").write_text(out if isinstance(out, str) else json.dumps(m))


def _outside(d: Path) -> None:
    import shutil

    shutil.copy(d / "policy.onnx", d.parent / "elsewhere.onnx")
    _edit_manifest(d, lambda m: m.update(model_file="../elsewhere.onnx"))


def _absolute(d: Path) -> None:
    import shutil

    shutil.copy(d / "policy.onnx", d.parent / "abs.onnx")
    _edit_manifest(d, lambda m: m.update(model_file=str(d.parent / "abs.onnx")))


def _symlink_out(d: Path) -> None:
    (d / "policy.onnx").rename(d.parent / "real.onnx")
    (d / "policy.onnx").symlink_to(d.parent / "real.onnx")


def _nan_utilization(m: dict) -> str:
    import json

    m["action_mapping"]["utilization"] = [0.5, float("nan")]
    return json.dumps(m)  # writes NaN, which Python's json reads back


MANIFEST_CASES = [
    ("dotdot", _outside, "model_file"),
    ("absolute", _absolute, "model_file"),
    ("symlink-out", _symlink_out, "outside the model directory"),
    ("number", lambda d: _edit_manifest(d, lambda m: "5"), "expected a JSON object"),
    ("string", lambda d: _edit_manifest(d, lambda m: '"policy"'), "expected a JSON object"),
    ("obs-null", lambda d: _edit_manifest(d, lambda m: m.update(observation=None)), "observation"),
    ("huge-int", lambda d: _edit_manifest(d, lambda m: '{"format_version": ' + "9" * 5000 + "}"), "manifest.json"),
    ("version-str", lambda d: _edit_manifest(d, lambda m: m.update(format_version="1")), "format_version"),
    ("dim-float", lambda d: _edit_manifest(d, lambda m: m["observation"].update(dim=26.5)), "observation.dim"),
    (
        "util-tiny",
        lambda d: _edit_manifest(d, lambda m: m["action_mapping"].update(utilization=[1e-300])),
        "utilization",
    ),
    (
        "cushion-huge",
        lambda d: _edit_manifest(d, lambda m: m["action_mapping"].update(cushion_day_max_share=[1e300])),
        "cushion_day_max_share",
    ),
    ("util-nan", lambda d: _edit_manifest(d, lambda m: _nan_utilization(m)), "utilization"),
    ("sha-bad", lambda d: _edit_manifest(d, lambda m: m.update(sha256="xyz")), "sha256"),
    ("dup-key", lambda d: _edit_manifest(d, lambda m: '{"format_version": 1, "format_version": 1}'), "duplicate key"),
    ("fifo", lambda d: (d / "manifest.json").unlink() or os.mkfifo(d / "manifest.json"), "not a regular file"),
]


@pytest.mark.parametrize("case, damage, reason", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_a_bad_manifest_is_refused_in_one_line(tmp_path, capsys, case, damage, reason):
    from fleetpilot.policies.onnx_policy import ModelError, verify

    d = _model(tmp_path)
    damage(d)
    with pytest.raises(ModelError, match=reason):
        verify(d)
    for argv in (
        ["policies", "inspect", str(d)],
        ["backtest", "--synthetic", "--seeds", "0", "--minutes", "100", "--policy", str(d)],
    ):
        rc, err = _main(*argv, capsys=capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and reason in err, (argv, err)


def test_fleetpilot_run_refuses_a_bad_manifest_with_one_line(tmp_path):
    d = _model(tmp_path)
    _outside(d)
    p = write_yaml(tmp_path, sim_config(tmp_path, policy=str(d)))
    one_line_exit_2(cli("run", "--config", str(p), "--once", "--quiet"), "model_file")


# --- 6. inputs that hang or flood ---------------------------------------------------------------------------
def test_a_fifo_config_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    one_line_exit_2(cli("config", "check", str(fifo), timeout=20), "not a regular file")


def test_dev_zero_as_config_is_refused_without_reading_it():
    one_line_exit_2(cli("config", "check", "/dev/zero", timeout=20), "/dev/zero", "not a regular file")


def test_a_huge_config_is_refused(tmp_path):
    p = tmp_path / "c.yaml"
    with p.open("wb") as fh:  # a sparse file: its size is what counts
        fh.truncate(3 << 20)
    with pytest.raises(ConfigError, match="too large"):
        load_config(p)


def test_a_trace_that_is_not_a_regular_file_is_refused(tmp_path):
    from fleetpilot.sim.load import TraceError, read_trace

    os.mkfifo(tmp_path / "t.csv")
    with pytest.raises(TraceError, match="not a regular file"):
        read_trace(tmp_path / "t.csv")
    with pytest.raises(TraceError, match="not a regular file"):
        read_trace("/dev/zero")
    with (tmp_path / "big.csv").open("wb") as fh:
        fh.truncate(600 << 20)
    with pytest.raises(TraceError, match="too large"):
        read_trace(tmp_path / "big.csv")


def test_a_40_mb_trace_field_is_refused_at_its_line_without_reading_it_whole(tmp_path):
    import tracemalloc

    from fleetpilot.sim.load import TraceError, read_trace

    p = tmp_path / "t.csv"
    with p.open("wb") as fh:
        fh.write(b"timestamp,requests\n2026-01-05T00:00:00Z,5\n2026-01-05T00:01:00Z,")
        fh.write(b"7" * (40 << 20))
        fh.write(b"\n")
    tracemalloc.start()
    try:
        with pytest.raises(TraceError, match=r"t\.csv:3: line longer than"):
            read_trace(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak / 2**20:.1f} MiB allocated to refuse it"


def _threads() -> int:
    import threading

    return threading.active_count()


def test_the_metrics_server_bounds_connections_and_drops_idle_ones():
    import socket
    import time
    import urllib.request

    from prometheus_client import Gauge

    from fleetpilot.controller.server import StatusServer

    reg = CollectorRegistry()
    Gauge("hardening_probe", "a probe", registry=reg).set(1)
    srv = StatusServer("127.0.0.1", 0, reg, lambda: (True, {}), lambda: (True, {}), idle_timeout_seconds=0.5)
    srv.start()
    host, port = srv.address
    base = _threads()
    socks = []
    try:
        for _ in range(300):
            s = socket.create_connection((host, port))
            socks.append(s)
        half = socks[0]
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # half a request, then silence
        time.sleep(0.3)
        assert _threads() <= base + srv.max_connections + 1, _threads()
        # idle and half-open connections are closed after the idle timeout; the server then answers again
        time.sleep(1.0)
        half.settimeout(2)
        assert half.recv(100) == b""  # closed by the server
        body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read()
        assert b"hardening_probe 1.0" in body
        assert _threads() <= base + 1, _threads()
    finally:
        for s in socks:
            s.close()
        srv.stop()


# --- 7. duplicate YAML keys; a trace with a byte-order mark -------------------------------------------------
def test_duplicate_yaml_keys_are_refused_naming_key_and_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(sim_config(tmp_path)) + "dry_run: true\ndry_run: false\n")
    n = p.read_text().count("\n")
    with pytest.raises(ConfigError, match=rf"c\.yaml:{n}: duplicate key 'dry_run' \(first on line {n - 1}\)"):
        load_config(p)
    data = sim_config(tmp_path)
    text = yaml.safe_dump(data).replace("  name: web\n", "  name: web\n  name: api\n")
    p.write_text(text)
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        load_config(p)


def _alias_bomb(levels: int) -> str:
    """YAML of a few lines whose nested aliases stand for 10 ** (levels + 1) values."""
    names = [f"l{i}" for i in range(levels + 1)]
    text = f"{names[0]}: &{names[0]} [{', '.join(['x'] * 10)}]\n"
    for prev, name in zip(names[:-1], names[1:], strict=True):
        text += f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]\n"
    return text


def test_yaml_anchors_are_welcome_but_an_alias_bomb_or_a_recursive_alias_is_refused(tmp_path, capsys):
    from fleetpilot.policies.files import load_yaml

    # an anchor and a merge key: settings written once and reused
    assert load_yaml("base: &base {a: 1, b: 2}\ngroup: {<<: *base, b: 3}\n") == {
        "base": {"a": 1, "b": 2},
        "group": {"a": 1, "b": 3},
    }
    p = tmp_path / "c.yaml"
    text = yaml.safe_dump(sim_config(tmp_path))
    p.write_text(text + _alias_bomb(8))  # 10^9 values in 9 lines
    first = text.count("\n") + 7  # named at l6, the first line standing for more than 2 million (11 million)
    with pytest.raises(ConfigError, match=rf"c\.yaml:{first}: not valid YAML: its aliases make it stand for more"):
        load_config(p)
    p.write_text(text + "loop: &loop [1, *loop]\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: not valid YAML: an alias refers to a node that contains it"):
        load_config(p)
    t = tmp_path / "ppo.yaml"
    t.write_text(_alias_bomb(8))
    rc, err = _main("train", "--config", str(t), "--out", str(tmp_path / "m"), capsys=capsys)
    assert rc == 2 and err.count("\n") == 1 and "ppo.yaml:7: not valid YAML (its aliases make it stand" in err, err
    assert not (tmp_path / "m").exists()


def test_a_trace_with_a_utf8_bom_is_accepted(tmp_path):
    from fleetpilot.sim.load import read_trace

    p = tmp_path / "t.csv"
    p.write_bytes(b"\xef\xbb\xbftimestamp,requests\r\n2026-01-05T00:00:00Z,5\r\n2026-01-05T00:01:00Z,7\r\n")
    assert list(read_trace(p).load_tpm) == [5.0, 7.0]


def test_a_trace_with_a_duplicate_column_is_refused(tmp_path):
    from fleetpilot.sim.load import TraceError, read_trace

    p = tmp_path / "t.csv"
    p.write_text("timestamp,requests,requests\n2026-01-05T00:00:00Z,5,6\n")
    with pytest.raises(TraceError, match=r"t\.csv:1: duplicate column 'requests'"):
        read_trace(p)


def test_the_training_config_is_read_the_same_careful_way(tmp_path, capsys):
    p = tmp_path / "ppo.yaml"
    p.write_text("total_steps: 1000\ntotal_steps: 2000\n")
    rc, err = _main("train", "--config", str(p), "--out", str(tmp_path / "m"), capsys=capsys)
    assert rc == 2 and "ppo.yaml:2: duplicate key 'total_steps'" in err, err
    rc, err = _main("train", "--config", "/dev/zero", "--out", str(tmp_path / "m"), capsys=capsys)
    assert rc == 2 and "not a regular file" in err, err


def test_the_metrics_server_shuts_a_trickling_client_at_the_deadline(capfd):
    import socket
    import time

    from fleetpilot.controller.server import StatusServer

    srv = StatusServer(
        "127.0.0.1",
        0,
        CollectorRegistry(),
        lambda: (True, {}),
        lambda: (True, {}),
        idle_timeout_seconds=0.5,
        request_deadline_seconds=1.0,
    )
    srv.start()
    s = socket.create_connection(srv.address)
    t0 = time.monotonic()
    closed = False
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        while time.monotonic() - t0 < 5 and not closed:
            try:
                s.sendall(b"X-A: b\r\n")  # a header every 0.2 s: never idle, never done
            except OSError:
                closed = True
                break
            s.settimeout(0.2)
            try:
                closed = s.recv(100) == b""
            except TimeoutError:
                pass
        assert closed and time.monotonic() - t0 < 3, time.monotonic() - t0
    finally:
        s.close()
        srv.stop()
    assert "Traceback" not in capfd.readouterr().err  # a client cut off is a DEBUG line, not a raw traceback


# --- 3. credentials never reach a log ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, secrets",
    [
        ("http://s3cr3tT0ken@prom:9090", ["s3cr3tT0ken"]),
        ("http://bob:p@ss@w0rd@prom:9090/x", ["p@ss", "ss@w0rd", "w0rd"]),
        ("https://prom:9090/?access_token=abc123xyz&x=1", ["abc123xyz"]),
        ("https://prom:9090/?auth=abc123xyz", ["abc123xyz"]),
        ("https://prom:9090/?apikey=abc123xyz", ["abc123xyz"]),
        ("https://prom:9090/?X-Amz-Signature=abc123xyz", ["abc123xyz"]),
    ],
)
def test_every_url_credential_is_masked_in_the_logged_config(url, secrets):
    from fleetpilot.controller.config import mask_secrets

    out = str(mask_secrets({"groups": [{"source": {"url": url}}]}))
    for s in secrets:
        assert s not in out, out
    assert "prom" in out


@pytest.fixture
def echo_server():
    """A real HTTP server that answers 500 with the request's headers echoed in the body (as some proxies and
    misconfigured servers do), and remembers the last Authorization header it got."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: dict[str, str | None] = {}

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen["authorization"] = self.headers.get("Authorization")
            body = f"<html><pre>upstream error\n{self.headers}</pre></html>".encode()
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}", seen
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize(
    "userinfo, secrets",
    [("s3cr3tT0ken@", ["s3cr3tT0ken"]), ("bob:p@ss@w0rd@", ["p@ss", "w0rd"]), ("bob:hunter2@", ["hunter2"])],
)
def test_an_echoed_authorization_header_is_never_in_a_source_error(echo_server, userinfo, secrets):
    import base64

    from fleetpilot.controller.sources.base import SourceError
    from fleetpilot.controller.sources.prometheus import PrometheusSource

    hostport, seen = echo_server
    src = PrometheusSource(f"http://{userinfo}{hostport}", "up")
    with pytest.raises(SourceError) as e:
        src.latest(29_000_000)
    msg = str(e.value)
    assert seen["authorization"].startswith("Basic ")
    b64 = seen["authorization"].split()[1]
    assert "HTTP 500" in msg and b64 not in msg and base64.b64decode(b64).decode() not in msg, msg
    for s in secrets:
        assert s not in msg, msg


def test_prometheus_auth_from_secret_files(tmp_path, echo_server, capfd):
    """`bearer_token_file` and `basic_auth.password_file`: the credential is sent, never logged or dumped."""
    import logging

    from fleetpilot.controller.config import masked_dump
    from fleetpilot.controller.factory import make_source
    from fleetpilot.controller.logs import setup_logging
    from fleetpilot.controller.sources.base import SourceError

    hostport, seen = echo_server
    (tmp_path / "token").write_text("tok-0123456789abcdef\n")
    (tmp_path / "pw").write_text("pw-0123456789abcdef\n")
    for auth, header in (
        ({"bearer_token_file": "token"}, "Bearer tok-0123456789abcdef"),
        ({"basic_auth": {"username": "bob", "password_file": "pw"}}, "Basic Ym9iOnB3LTAxMjM0NTY3ODlhYmNkZWY="),
    ):
        src_cfg = {"kind": "prometheus", "url": f"http://{hostport}", "query": "up", **auth}
        data = sim_config(tmp_path, source=src_cfg, backend={"kind": "simulated"})
        data["interval_seconds"] = 60
        cfg = load_config(write_yaml(tmp_path, data))
        assert "0123456789abcdef" not in str(masked_dump(cfg))
        src = make_source(cfg.groups[0])
        setup_logging("DEBUG")
        try:
            with pytest.raises(SourceError) as e:
                src.latest(29_000_000)
            logging.getLogger("fleetpilot.test").error("failed: %s", e.value)
        finally:
            logging.getLogger().handlers.clear()
        assert seen["authorization"] == header
        assert "0123456789abcdef" not in str(e.value) and "0123456789abcdef" not in capfd.readouterr().err


@pytest.mark.parametrize(
    "extra, reason",
    [
        ({"bearer_token_file": "missing"}, "bearer_token_file"),
        ({"bearer_token_file": "/dev/zero"}, "not a regular file"),
        ({"bearer_token_file": "token", "url": "http://bob:pw@prom:9090"}, "one way"),
        ({"bearer_token_file": "token", "basic_auth": {"username": "u", "password_env": "PW"}}, "one way"),
        ({"basic_auth": {"username": "u"}}, "password_file or password_env"),
        ({"basic_auth": {"username": "u", "password_env": "FLEETPILOT_TEST_UNSET_PW"}}, "not set"),
    ],
)
def test_prometheus_auth_fields_are_checked(tmp_path, extra, reason):
    (tmp_path / "token").write_text("tok\n")
    src_cfg = {"kind": "prometheus", "url": "http://prom:9090", "query": "up", **extra}
    data = sim_config(tmp_path, source=src_cfg, backend={"kind": "simulated"})
    data["interval_seconds"] = 60
    with pytest.raises(ConfigError, match=reason):
        load_config(write_yaml(tmp_path, data))


def test_the_log_formatter_masks_credentials_whatever_logs_them(capfd):
    import logging

    from fleetpilot.controller.logs import setup_logging

    setup_logging("INFO")
    try:
        logging.getLogger("x").warning(
            "oops %s", "GET http://tok3n@h/ Authorization: Basic Ym9iOmh1bnRlcjI= and Bearer eyJhbGciOi.x.y"
        )
    finally:
        logging.getLogger().handlers.clear()
    err = capfd.readouterr().err
    for s in ("tok3n", "Ym9iOmh1bnRlcjI", "eyJhbGciOi"):
        assert s not in err, err


# --- siblings ------------------------------------------------------------------------------------------------
class _Planted:
    def __reduce__(self):
        return (os.system, ("touch /tmp/fleetpilot-planted-checkpoint-ran",))


def test_a_planted_training_checkpoint_runs_no_code(tmp_path):
    """Sibling of the trusted manifest: a resumed training unpickles checkpoint.pt from its output directory."""
    import pickle

    from fleetpilot.training.ppo import Checkpoint, CheckpointError

    marker = Path("/tmp/fleetpilot-planted-checkpoint-ran")
    marker.unlink(missing_ok=True)
    p = tmp_path / "checkpoint.pt"
    p.write_bytes(pickle.dumps({"agent": _Planted()}))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        Checkpoint.load(p)
    assert not marker.exists()


def test_a_flooding_prometheus_answer_is_cut_at_a_limit():
    """Sibling of the size limits: a server (or a proxy in front of it) answering gigabytes within the timeout."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from fleetpilot.controller.sources import prometheus
    from fleetpilot.controller.sources.base import SourceError

    class Flood(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(200):  # 200 MiB, fast
                    self.wfile.write(b" " * (1 << 20))
            except OSError:
                pass

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Flood)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        src = prometheus.PrometheusSource(f"http://127.0.0.1:{srv.server_address[1]}", "up", timeout_seconds=20)
        with pytest.raises(SourceError, match="larger than"):
            src.latest(29_000_000)
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_cli_error_line_masks_credentials_too(tmp_path, capsys):
    p = write_yaml(tmp_path, sim_config(tmp_path, policy="http://bob:hunter2@models.example/m"))
    rc, err = _main("config", "check", str(p), capsys=capsys)
    assert rc == 2 and "no such model directory" in err and "hunter2" not in err, err
