"""Training and evaluation on Ray (issue 13, item 4): the fan-out on a real local Ray cluster gives the same
results as the in-process run, for a tune grid, a multi-trace backtest and `train --trace-dir`; a failing item
stays that item's error; an unreachable address is one line naming it, exit code 2.

One Ray head node on this machine (2 CPUs) serves the whole module; nothing reaches the network (usage stats off,
no dashboard). Ray resolves 127.0.0.1 to the node's own address (services.resolve_ip_for_localhost), so the
cluster's address is this machine's, not loopback; no other machine is involved."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fleetpilot.controller.cli import main
from fleetpilot.training.backtest import synthetic_run
from fleetpilot.training.fanout import map_tasks
from fleetpilot.training.tune import tune

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'fleetpilot[distributed]')")

FLEETPILOT = [sys.executable, "-m", "fleetpilot.controller.cli"]
QUIET_RAY = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
}
SMOKE = """
num_envs: 16
num_steps: 32
episode_minutes: 400
eval_seeds: [500]
eval_minutes: 300
eval_every_updates: 2
init_loads: 4
imitation_epochs: 2
"""


@pytest.fixture(scope="session")
def ray_address():
    """A local Ray head node with 2 CPUs, started once; its GCS address (what `--ray` takes)."""
    os.environ.update(QUIET_RAY)
    ray.init(
        address="local",
        include_dashboard=False,
        num_cpus=2,
        log_to_driver=False,
        logging_level="WARNING",
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _explode(x: int) -> int:
    if x == 2:
        raise ValueError(f"item {x} is broken")
    return x * x


def _die(x: int) -> int:
    if x == 1:
        os._exit(3)  # the worker process dies under the task
    return x


def test_map_tasks_keeps_order_and_turns_failures_into_item_errors(ray_address):
    items = list(range(6))
    here = map_tasks(_explode, items)
    there = map_tasks(_explode, items, ray_address)
    assert here == there
    assert [o.value for o in there if o.ok] == [0, 1, 9, 16, 25]
    assert not there[2].ok and there[2].error == "ValueError: item 2 is broken" and not there[2].user_error
    died = map_tasks(_die, [0, 1, 2], ray_address)
    assert died[0].value == 0 and died[2].value == 2
    assert not died[1].ok and "the Ray task failed" in (died[1].error or "")


def test_tune_grid_on_ray_equals_in_process(ray_address):
    runs = [synthetic_run(s, 400) for s in (0, 1)]
    here = tune("predictive", runs)
    there = tune("predictive", runs, ray_address=ray_address)
    assert here["grid_points"] == 16
    assert there == here


def test_grid_scores_on_ray_equal_in_process(ray_address):
    """benchmarks/generalization.py scores its hindsight grids as Ray tasks with --ray: the same rows, in order."""
    from fleetpilot.training.tune import grid_scores

    runs = [synthetic_run(s, 300) for s in (0, 1)]
    grid = {"target_utilization": [0.5, 0.7], "scale_in_tolerance": [0.1], "scale_in_cooldown_minutes": [5]}
    here = grid_scores("target-tracking", runs, grid)
    there = grid_scores("target-tracking", runs, grid, ray_address)
    rest = {"scale_in_tolerance": 0.1, "scale_in_cooldown_minutes": 5}
    assert [p for p, _ in here] == [{"target_utilization": u, **rest} for u in (0.5, 0.7)]
    assert len(here[0][1]) == 2
    assert there == here


def _traces(d: Path, lengths: dict[str, int]) -> list[Path]:
    paths = []
    for i, (name, minutes) in enumerate(lengths.items()):
        p = d / f"{name}.csv"
        assert main(["traces", "generate", "--seed", str(10 + i), "--minutes", str(minutes), "--out", str(p)]) == 0
        paths.append(p)
    return paths


def test_multi_trace_backtest_on_ray_equals_in_process(ray_address, tmp_path, capsys):
    # two of equal length (batched together in process, one task each on Ray) and one longer
    paths = _traces(tmp_path, {"a": 900, "b": 900, "c": 1300})
    args = ["backtest", *[x for p in paths for x in ("--trace", str(p))], "--minutes", "600"]
    args += ["--policy", "target-tracking", "--policy", "default", "--policy", "oracle"]
    assert main([*args, "--json", str(tmp_path / "here.json")]) == 0
    assert main([*args, "--json", str(tmp_path / "there.json"), "--ray", ray_address]) == 0
    here = json.loads((tmp_path / "here.json").read_text())
    there = json.loads((tmp_path / "there.json").read_text())
    assert [r["load"] for r in there["runs"]] == [r["load"] for r in here["runs"]] and len(here["runs"]) == 3
    assert there == here
    out = capsys.readouterr().out
    assert out.count("3 run(s)") == 2


def test_train_trace_dir_on_ray_equals_in_process(ray_address, tmp_path, capsys):
    d = tmp_path / "histories"
    d.mkdir()
    _traces(d, {"web": 2600, "api": 2700})  # a training part of a day or more under --split 0.7,0.15,0.15
    (d / "broken.csv").write_text("timestamp,requests\n2024-01-01T00:00:00Z,5\n2024-01-01T00:01:00Z,abc\n")
    (d / "notes.txt").write_text("not a history\n")
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(SMOKE)
    common = [
        "train",
        "--trace-dir",
        str(d),
        "--config",
        str(cfg),
        "--steps",
        "1024",
        "--seed",
        "3",
        "--split",
        "0.7,0.15,0.15",
    ]
    # in this process
    assert main([*common, "--out", str(tmp_path / "here")]) == 1  # one of three histories could not train
    err = capsys.readouterr().err
    bad = [line for line in err.splitlines() if "error" in line]
    assert bad == [f"fleetpilot train: error: {d / 'broken.csv'}:3: requests 'abc' is not a number"]
    # a second driver process on the same cluster
    r = subprocess.run(
        [*FLEETPILOT, *common, "--out", str(tmp_path / "there"), "--ray", ray_address],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **QUIET_RAY},
    )
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if "error" in line] == bad
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == ["api", "web"]
    for stem in ("api", "web"):
        a = json.loads((tmp_path / "here" / stem / "manifest.json").read_text())
        b = json.loads((tmp_path / "there" / stem / "manifest.json").read_text())
        assert a["sha256"] == b["sha256"], stem
        assert a["validation"] == b["validation"]
        assert a["training"]["ppo"]["threads"] == 1 and a["training"]["loads"][0]["trace"] == str(d / f"{stem}.csv")
        for info, out in ((a["training"], tmp_path / "here"), (b["training"], tmp_path / "there")):
            info.pop("seconds"), info.pop("command")  # the in-process run has no command line
            # the command that reproduces the test figures names the run's own output directory
            assert f"--policy {out / stem} " in info["test"].pop("backtest_command")
        assert a["training"] == b["training"]


def test_trace_dir_where_nothing_can_train_exits_2(tmp_path, capsys):
    d = tmp_path / "h"
    d.mkdir()
    (d / "x.csv").write_text("timestamp,requests\n")
    assert main(["train", "--trace-dir", str(d), "--out", str(tmp_path / "o"), "--steps", "64"]) == 2
    err = capsys.readouterr().err
    assert f"fleetpilot train: error: {d / 'x.csv'}:2: no data rows" in err
    assert main(["train", "--trace-dir", str(tmp_path / "o2"), "--out", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (d / "x.csv").unlink()
    assert main(["train", "--trace-dir", str(d), "--out", str(tmp_path / "o")]) == 2
    assert "no *.csv history files" in capsys.readouterr().err
    assert main(["train", "--steps", "64", "--out", str(tmp_path / "o"), "--ray", "auto"]) == 2
    assert "--ray fans out --trace-dir" in capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "no-such-host.invalid:6379", "::::"])
def test_unreachable_ray_address_is_one_line_exit_2(address):
    address = address.format(port=_closed_port())
    r = subprocess.run(
        [*FLEETPILOT, "tune", "--policy", "static", "--synthetic", "--seeds", "0", "--minutes", "50", "--ray", address],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **QUIET_RAY},
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fleetpilot tune: error: --ray {address}: "), r.stderr
    assert r.stdout == ""
