"""`fleetpilot train --trace`: the history is split by time into train / validation / test (issue 12, item 1).

The manifest records the parts; the test part cannot influence the model (a history whose test part is
replaced trains the same model with the same validation figures); the printed report is the test part's,
and the backtest command it prints reproduces it; a history too short for the split is one line, exit 2.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleetpilot.sim.load import Load, synthetic_load, write_trace
from fleetpilot.training.cli import split_bounds, split_history

FLEETPILOT = [sys.executable, "-m", "fleetpilot.controller.cli"]
SMOKE = """
num_envs: 16
num_steps: 32
episode_minutes: 400
eval_every_updates: 2
init_loads: 8
"""
MINUTES = 3000  # train [0, 1800), validation [1800, 2400), test [2400, 3000)


def _trace(path: Path, minutes: int = MINUTES, seed: int = 7) -> np.ndarray:
    load = synthetic_load(np.random.default_rng(seed), minutes)
    write_trace(path, Load("history", load))
    return load


def _train(d: Path, trace: Path, name: str, *extra: str) -> tuple[Path, subprocess.CompletedProcess]:
    cfg = d / "ppo.yaml"
    cfg.write_text(SMOKE)
    out = d / name
    args = ["train", "--trace", str(trace), "--config", str(cfg), "--steps", "1024", "--seed", "3", "--out", str(out)]
    r = subprocess.run(FLEETPILOT + args + list(extra), capture_output=True, text=True, timeout=300)
    return out, r


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    trace = d / "history.csv"
    _trace(trace)
    out, r = _train(d, trace, "model")
    assert r.returncode == 0, r.stderr[-2000:]
    return d, trace, out, r


def test_the_manifest_records_which_minutes_were_used_for_what(trained):
    _, trace, out, _ = trained
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["training"]["loads"]
    split = entry["data_split"]
    assert split["train"]["minutes"] == [0, 1800]
    assert split["validation"]["minutes"] == [1800, 2400]
    assert split["test"]["minutes"] == [2400, 3000]
    # the synthetic trace starts on 2026-01-05 00:00 UTC: minute 1800 is 06 Jan 06:00
    assert split["validation"]["utc"] == ["2026-01-06T06:00:00Z", "2026-01-06T16:00:00Z"]
    assert split["test"]["utc"] == ["2026-01-06T16:00:00Z", "2026-01-07T02:00:00Z"]
    assert manifest["validation"]["runs"] == ["history[1800:2400]"]
    assert manifest["training"]["test"]["runs"] == ["history[2400:3000]"]
    assert manifest["training"]["test"]["forecast"]["horizon_minutes"] == 5
    check = manifest["training"]["check"]  # the fixed case tests/test_shipped_model.py replays
    assert check["seeds"] == [3000, 3001] and check["minutes"] == 2000
    assert {x["policy"] for x in check["summary"]} >= {"default", "target-tracking", "oracle"}


def test_the_split_is_configurable_and_refused_when_malformed(tmp_path):
    assert split_bounds(10_000, (0.5, 0.25, 0.25)) == (5000, 7500)
    assert split_bounds(39_691, (0.6, 0.2, 0.2)) == (23814, 31752)
    trace = tmp_path / "h.csv"
    _trace(trace, 200)
    for bad, why in (("0.6,0.2", "three shares"), ("0.6,0.3,0.3", "sum to 1.2"), ("a,b,c", "three numbers")):
        r = subprocess.run(
            FLEETPILOT + ["train", "--trace", str(trace), "--split", bad, "--out", str(tmp_path / "o")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, r.stderr
        assert why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_validation_and_training_never_read_a_test_minute():
    load = Load("h", np.arange(MINUTES, dtype=np.float64) + 1.0)
    part, val, test, _ = split_history(load, (0.6, 0.2, 0.2), "h.csv", "0.6,0.2,0.2")
    assert part.load_tpm.max() == 1800.0  # minutes 0..1799
    assert val.load_tpm.max() == 2400.0  # minute 2399: the last before the test part
    assert val.load_tpm[val.lead] == 1801.0 and val.minutes == 599  # observes minute 1800, scores 1801..2399
    assert test.load_tpm[test.lead] == 2401.0 and test.minutes == 599  # observes minute 2400, scores the rest


def test_the_test_part_cannot_change_the_model(trained, tmp_path):
    d, trace, out, _ = trained
    other = tmp_path / "history.csv"  # the same name: the same capacity noise in the backtests
    load = _trace(other)
    load[2400:] = synthetic_load(np.random.default_rng(99), MINUTES - 2400) * 3.0  # a different test part
    write_trace(other, Load("history", load))
    out2, r = _train(tmp_path, other, "model")
    assert r.returncode == 0, r.stderr[-2000:]
    m1 = json.loads((out / "manifest.json").read_text())
    m2 = json.loads((out2 / "manifest.json").read_text())
    assert m1["sha256"] == m2["sha256"]
    assert m1["validation"]["summary"] == m2["validation"]["summary"]
    assert m1["training"]["test"]["summary"] != m2["training"]["test"]["summary"]  # the report is the test part's


def test_the_printed_report_is_the_test_part_and_its_backtest_command_reproduces_it(trained):
    d, trace, out, r = trained
    assert "test: the test part of each trace" in r.stdout
    assert "599 scored minutes" in r.stdout
    command = r.stdout.split("reproduce these test figures with:\n", 1)[1].splitlines()[0].strip()
    assert command.startswith("fleetpilot backtest ") and "--from 0.8 --to 1" in command
    bt = subprocess.run(FLEETPILOT + shlex.split(command)[1:], capture_output=True, text=True, timeout=300, cwd=d)
    assert bt.returncode == 0, bt.stderr[-2000:]

    def rows(text: str) -> dict[str, str]:
        table = text.split("scored minutes\n", 1)[1]
        return {
            ln.split()[0]: " ".join(ln.split()[1:])
            for ln in table.splitlines()[1:]
            if ln and not ln.startswith(("reproduce", "wrote", "forecast", " "))
        }

    trained_rows, replayed = rows(r.stdout), rows(bt.stdout)
    assert replayed.pop(str(out)) == trained_rows.pop("default")
    assert replayed == trained_rows


@pytest.mark.parametrize(
    ("minutes", "split", "reason"),
    [
        (2000, "0.6,0.2,0.2", "leave 1200 for training; at least a day (1441) is needed"),
        (2500, "0.96,0.02,0.02", "leave 49 scored minutes for validation; at least 60 are needed"),
        (57, "0.6,0.2,0.2", "leave 34 for training"),
    ],
)
def test_a_history_too_short_for_the_split_is_one_line_and_exit_2(tmp_path, minutes, split, reason):
    trace = tmp_path / "short.csv"
    _trace(trace, minutes)
    r = subprocess.run(
        FLEETPILOT + ["train", "--trace", str(trace), "--split", split, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert str(trace) in line and "too short for --split" in line and reason in line, line
    assert not (tmp_path / "o").exists()
    assert re.search(r"\d+ minutes", line)
