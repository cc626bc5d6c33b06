"""`fleetpilot backtest` and `fleetpilot traces generate` end to end, as subprocesses (issue 2): the happy path
writes JSON and a PNG; bad trace files and bad options each end with one line naming the file and line (or the
option) and the reason, exit code 2, and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleetpilot.sim.load import read_trace, synthetic_load

REPO = Path(__file__).resolve().parents[1]
FLEETPILOT = [sys.executable, "-m", "fleetpilot.controller.cli"]
GOOD_HEADER = "timestamp,requests\n"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    return env


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*FLEETPILOT, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _rows(first_minute: int, values: list[int]) -> str:
    return "".join(
        f"2026-01-05T{(first_minute + i) // 60:02d}:{(first_minute + i) % 60:02d}:00Z,{v}\n"
        for i, v in enumerate(values)
    )


def test_backtest_synthetic_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "out.json", tmp_path / "plot.png"
    p = _run(
        ["backtest", "--synthetic", "--seeds", "1..2", "--minutes", "1500", "--json", str(out), "--plot", str(png)],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    doc = json.loads(out.read_text())
    assert [r["load"] for r in doc["runs"]] == ["synthetic-1", "synthetic-2"]
    assert all(r["minutes"] == 1500 for r in doc["runs"])
    names = [s["policy"] for s in doc["summary"]]
    assert names == ["static", "target-tracking", "step", "predictive", "oracle"]  # the default policies
    assert all("pct_of_oracle" in s for s in doc["summary"])
    assert max(s["expected_profit_usd"] for s in doc["summary"]) == next(
        s["expected_profit_usd"] for s in doc["summary"] if s["policy"] == "oracle"
    )
    for name in names:  # the table names every policy
        assert name in p.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_traces_generate_then_replay(tmp_path):
    csv = tmp_path / "gen.csv"
    p = _run(["traces", "generate", "--seed", "7", "--minutes", "3000", "--out", str(csv)], tmp_path)
    assert p.returncode == 0, p.stderr
    load = read_trace(csv)
    assert load.minutes == 3000
    np.testing.assert_array_equal(load.load_tpm, synthetic_load(np.random.default_rng(7), 3000))
    assert csv.read_text().startswith(GOOD_HEADER)
    out = tmp_path / "replay.json"
    p = _run(
        [
            "backtest",
            "--trace",
            str(csv),
            "--peak-tpm",
            "9000",
            "--minutes",
            "1200",
            "--policy",
            "target-tracking",
            "--policy",
            "oracle",
            "--json",
            str(out),
        ],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert len(doc["runs"]) == 1 and doc["runs"][0]["minutes"] == 1200
    assert doc["runs"][0]["load"].startswith("gen[")
    tt, oracle = doc["summary"]
    assert tt["policy"] == "target-tracking" and oracle["policy"] == "oracle"
    assert 0 < tt["pct_of_oracle"] <= 100.0


# --- bad input: every case runs as its own process; all are started at once and collected once ------------

GOOD_ROWS = _rows(0, [10, 12, 11, 13])
BAD_TRACES = {
    # name: (file content or None for a missing file, line named, words of the reason)
    "missing_column": ("timestamp,count\n" + GOOD_ROWS, 1, "missing column 'requests'"),
    "non_numeric": (GOOD_HEADER + _rows(0, [10]) + "2026-01-05T00:01:00Z,lots\n", 3, "not a number"),
    "negative": (GOOD_HEADER + _rows(0, [10, 11, -4]), 4, "negative"),
    "duplicate": (GOOD_HEADER + _rows(0, [10, 11]) + _rows(1, [12]), 4, "duplicate timestamp"),
    "out_of_order": (GOOD_HEADER + _rows(0, [10, 11]) + _rows(0, [12]), 4, "earlier than the row before"),
    "gap": (GOOD_HEADER + _rows(0, [10, 11]) + _rows(5, [12, 13]), 4, "gap of 3 minute(s)"),
    "not_a_minute": (GOOD_HEADER + _rows(0, [10]) + "2026-01-05T00:01:30Z,11\n", 3, "not the start of a minute"),
    "empty": ("", 1, "empty file"),
    "missing_file": (None, None, "cannot read"),
}
BAD_OPTIONS = {
    # name: (arguments after `backtest`, words that must appear in the one line)
    "unknown_policy": (["--synthetic", "--policy", "nope"], "unknown policy 'nope'"),
    "empty_seed_range": (["--synthetic", "--seeds", "5..1"], "--seeds 5..1"),
    "zero_minutes": (["--synthetic", "--minutes", "0"], "--minutes"),
    "negative_peak": (["--trace", "TRACE", "--peak-tpm", "-3"], "--peak-tpm"),
    "synthetic_and_trace": (["--synthetic", "--trace", "TRACE"], "either --synthetic or --trace"),
    "plot_not_png": (["--synthetic", "--plot", "out.svg"], "--plot out.svg"),
    "json_missing_dir": (["--synthetic", "--json", "no/such/dir/out.json"], "does not exist"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Start every bad-input process at once (each fails fast) and collect (path, CompletedProcess)."""
    d = tmp_path_factory.mktemp("bad")
    good = d / "good.csv"
    good.write_text(GOOD_HEADER + GOOD_ROWS)
    procs = {}
    for name, (content, _, _) in BAD_TRACES.items():
        path = d / f"{name}.csv"
        if content is not None:
            path.write_text(content)
        procs[name] = (path, ["backtest", "--trace", str(path), "--policy", "static"])
    procs["gap_filled"] = (
        d / "gap.csv",
        ["backtest", "--trace", str(d / "gap.csv"), "--fill-gaps", "--policy", "static", "--policy", "oracle"],
    )
    for name, (args, _) in BAD_OPTIONS.items():
        procs[name] = (
            None,
            ["backtest", *[str(good) if a == "TRACE" else a for a in args], "--minutes", "50"]
            if "--minutes" not in args
            else ["backtest", *args],
        )
    started = {
        name: (
            path,
            subprocess.Popen(
                [*FLEETPILOT, *args], cwd=d, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ),
        )
        for name, (path, args) in procs.items()
    }
    done = {}
    for name, (path, proc) in started.items():
        out, err = proc.communicate(timeout=180)
        done[name] = (path, subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def _one_clean_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("fleetpilot backtest: error: ")
    return lines[0]


@pytest.mark.parametrize("name", list(BAD_TRACES))
def test_bad_trace_is_refused_with_file_line_and_reason(bad_runs, name):
    path, p = bad_runs[name]
    _, line_no, reason = BAD_TRACES[name]
    line = _one_clean_line(p)
    assert str(path) in line
    if line_no is not None:
        assert f"{path}:{line_no}: " in line
    assert reason in line


def test_gap_is_accepted_with_fill_gaps(bad_runs, tmp_path):
    path, p = bad_runs["gap_filled"]
    assert p.returncode == 0, p.stderr
    load = read_trace(path, fill_gaps=True)
    np.testing.assert_allclose(load.load_tpm, [10, 11, 11 + 1 / 4, 11 + 2 / 4, 11 + 3 / 4, 12, 13])


@pytest.mark.parametrize("name", list(BAD_OPTIONS))
def test_bad_option_is_refused_with_one_clear_line(bad_runs, name):
    _, p = bad_runs[name]
    line = _one_clean_line(p)
    assert BAD_OPTIONS[name][1] in line
