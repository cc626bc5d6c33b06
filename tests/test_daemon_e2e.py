"""End to end: `fleetpilot run` as a subprocess against the simulator; /metrics, /healthz, /readyz; SIGTERM;
exit code, JSON logs and journal; `--once`, `--dry-run`, `decisions`; neither torch nor gymnasium in the daemon process."""

from __future__ import annotations

import json
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FLEETPILOT = str(Path(sys.executable).parent / "fleetpilot")


def config(tmp_path: Path, **over) -> Path:
    d = {
        "interval_seconds": 0.05,
        "journal_path": "journal.sqlite",
        "server": {"host": "127.0.0.1", "port": 0},
        "groups": [
            {
                "name": "web",
                "policy": "target-tracking",
                "fallback_policy": "target-tracking",
                "source": {"kind": "simulator", "seed": 3},
                "backend": {"kind": "simulated", "seed": 3, "initial_machines": 50},
            }
        ],
    }
    d.update(over)
    p = tmp_path / "fleetpilot.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sample(metrics_text: str, name: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _pump(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_metrics_and_stops_cleanly(tmp_path, sig):
    cfg = config(tmp_path)
    proc = subprocess.Popen(
        [FLEETPILOT, "run", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    errq: queue.Queue = queue.Queue()
    stderr_lines: list[str] = []
    threading.Thread(target=_pump, args=(proc.stderr, errq), daemon=True).start()
    outq: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, outq), daemon=True).start()
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = errq.get(timeout=30)
            assert line is not None, "daemon exited early: " + "".join(stderr_lines)
            stderr_lines.append(line)
            rec = json.loads(line)
            if rec["msg"].startswith("serving /metrics"):
                port = rec["port"]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            code, text = get(base + "/metrics")
            assert code == 200
            if sample(text, 'fleetpilot_ticks_total{outcome="ok"}') >= 10 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sample(text, 'fleetpilot_ticks_total{outcome="ok"}') >= 10
        assert sample(text, 'fleetpilot_machines{group="web",state="active"}') > 0
        assert sample(text, 'fleetpilot_load_tpm{group="web"}') > 0
        assert "fleetpilot_tick_duration_seconds_bucket" in text and "fleetpilot_inference_seconds_count" in text
        code, body = get(base + "/healthz")
        assert code == 200 and json.loads(body)["ok"] is True
        code, body = get(base + "/readyz")
        assert code == 200 and json.loads(body)["backfilled"] is True
        assert get(base + "/nope")[0] == 404
        t0 = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
        assert rc == 0 and time.monotonic() - t0 < 20  # the tick finishes, no next one: generous for a busy machine
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while (line := errq.get(timeout=5)) is not None:
        stderr_lines.append(line)
    recs = [json.loads(line) for line in stderr_lines]  # every stderr line is one JSON object
    msgs = [r["msg"] for r in recs]
    assert "config" in msgs and "signal received; finishing the current tick" in msgs and msgs[-1] == "stopped"
    out = []
    while (line := outq.get(timeout=5)) is not None:
        out.append(line)
    assert out and all(line.startswith("tick ") and " web load=" in line for line in out)
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    n, last_tick = db.execute("SELECT count(*), max(tick) FROM decisions WHERE group_name='web'").fetchone()
    assert n >= 10 and n == last_tick + 1  # every tick journaled, the last one too
    assert recs[-1]["ticks"] == n


def _run_once_in_process(cfg: Path, *extra: str, env=None) -> subprocess.CompletedProcess:
    """`fleetpilot run --once` in a fresh interpreter that then reports what it imported and mapped."""
    code = (
        "import sys, json\n"
        "import fleetpilot.controller.daemon, fleetpilot.controller.factory, fleetpilot.controller.sources.simulator\n"
        "import fleetpilot.controller.sources.csv_replay, fleetpilot.controller.backends.simulated\n"
        "from fleetpilot.controller.cli import main\n"
        f"rc = main(['run', '--config', {str(cfg)!r}, '--once', *{list(extra)!r}])\n"
        "maps = open('/proc/self/maps').read()\n"
        "mods = lambda name: sorted(m for m in sys.modules if m == name or m.startswith(name + '.'))\n"
        "print(json.dumps({'rc': rc, 'torch': mods('torch'), 'libtorch': 'libtorch' in maps,"
        " 'boto3': 'boto3' in sys.modules, 'gymnasium': mods('gymnasium'), 'training': mods('fleetpilot.training')}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)


def test_once_decides_once_without_torch(tmp_path):
    p = _run_once_in_process(config(tmp_path))
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout.strip().splitlines()[-1])
    # the training side is there only as the command line's subcommand parsers: no env, no gymnasium
    assert report == {
        "rc": 0,
        "torch": [],
        "libtorch": False,
        "boto3": False,
        "gymnasium": [],
        "training": ["fleetpilot.training", "fleetpilot.training.cli"],
    }
    assert p.stdout.splitlines()[0].startswith("tick 0 web load=")
    assert "first decision" in p.stderr
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    assert db.execute("SELECT count(*), min(outcome) FROM decisions").fetchone() == (1, "written")


def test_example_config_runs_without_torch(tmp_path):
    """The Quick start config (policy `default`: the shipped model, or its fallback until it ships)."""
    import os

    env = {**os.environ, "FLEETPILOT_JOURNAL_PATH": str(tmp_path / "j.sqlite")}
    p = _run_once_in_process(REPO / "examples" / "simulator.yaml", "--quiet", env=env)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0 and report["torch"] == [] and report["libtorch"] is False
    assert report["gymnasium"] == [] and report["training"] == ["fleetpilot.training", "fleetpilot.training.cli"]
    assert len(p.stdout.strip().splitlines()) == 1  # --quiet: no tick summary


def test_dry_run_flag_skips_the_write(tmp_path):
    cfg = config(tmp_path)
    p = subprocess.run(
        [FLEETPILOT, "run", "--config", str(cfg), "--once", "--dry-run"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    marks = [json.loads(line) for line in p.stderr.splitlines() if "DRY-RUN" in line]
    assert len(marks) == 1 and marks[0]["msg"] == "DRY-RUN: would set desired capacity" and marks[0]["group"] == "web"
    (outcome, final, before) = (
        sqlite3.connect(tmp_path / "journal.sqlite")
        .execute("SELECT outcome, final, desired_before FROM decisions")
        .fetchone()
    )
    assert outcome == "dry-run" and final != before


def test_decisions_command(tmp_path):
    cfg = config(
        tmp_path,
        groups=[
            {
                "name": n,
                "policy": "target-tracking",
                "source": {"kind": "simulator", "seed": i},
                "backend": {"kind": "simulated", "seed": i},
            }
            for i, n in enumerate(("web", "api"))
        ],
    )
    for _ in range(2):
        assert (
            subprocess.run(
                [FLEETPILOT, "run", "--config", str(cfg), "--once", "--quiet"], capture_output=True, timeout=60
            ).returncode
            == 0
        )
    t = subprocess.run(
        [FLEETPILOT, "decisions", "--config", str(cfg), "--group", "api", "--last", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert t.returncode == 0, t.stderr
    lines = t.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["id", "minute", "group", "load_tpm"] and len(lines) == 3
    assert all(" api " in line for line in lines[1:])
    j = subprocess.run(
        [FLEETPILOT, "decisions", "--journal", str(tmp_path / "journal.sqlite"), "--last", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = [json.loads(line) for line in j.stdout.splitlines()]
    assert len(rows) == 3 and {"group_name", "load_tpm", "raw_action", "guards", "final", "outcome"} <= set(rows[0])
    bad = subprocess.run(
        [FLEETPILOT, "decisions", "--journal", str(tmp_path / "none.sqlite")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no journal" in bad.stderr
