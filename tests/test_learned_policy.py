"""The learned policy: PPO smoke training through the CLI, ONNX export parity, model verification."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleetpilot.policies.actions import ActionMapping
from fleetpilot.policies.observation import FEATURE_NAMES, OBS_DIM, OBS_VERSION
from fleetpilot.policies.onnx_policy import ModelError, OnnxPolicy, verify

FLEETPILOT = [sys.executable, "-m", "fleetpilot.controller.cli"]
TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "nasa_http_jul95_minute.csv"

SMOKE = """
num_envs: 16
num_steps: 32
episode_minutes: 400
eval_seeds: [500]
eval_minutes: 300
eval_every_updates: 2
"""


def _train_smoke(d: Path, name: str) -> tuple[Path, subprocess.CompletedProcess]:
    """`fleetpilot train` with the SMOKE config, 2,048 steps, seed 3, into d/name (asserted to succeed)."""
    cfg = d / "ppo.yaml"
    cfg.write_text(SMOKE)
    out = d / name
    r = subprocess.run(
        FLEETPILOT + ["train", "--config", str(cfg), "--steps", "2048", "--seed", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory) -> Path:
    out, r = _train_smoke(tmp_path_factory.mktemp("smoke"), "model")
    assert "oracle" in r.stdout
    return out


def test_train_writes_a_verified_model(smoke_model: Path):
    manifest, model = verify(smoke_model)
    assert model.name == "policy.onnx"
    assert manifest["observation"] == {
        "version": OBS_VERSION,
        "dim": OBS_DIM,
        "features": list(FEATURE_NAMES),
    }
    assert manifest["training"]["steps"] >= 2048
    names = [s["policy"] for s in manifest["validation"]["summary"]]
    assert names[0] == "default" and "oracle" in names and "target-tracking" in names
    for f in ("train_log.jsonl", "checkpoint.pt", "learning_curve.png"):
        assert (smoke_model / f).is_file(), f
    rows = [json.loads(x) for x in (smoke_model / "train_log.jsonl").read_text().splitlines()]
    assert rows and all("steps_per_s" in r for r in rows)
    # the exported actor is the best one validated (update 0: the imitated starting rule)
    kept = manifest["validation"]["summary"][0]["pct_of_oracle"]
    assert manifest["training"]["selected_update"] in [0] + [r["update"] for r in rows if "val_pct_of_oracle" in r]
    assert all(kept >= r["val_pct_of_oracle"] - 0.01 for r in rows if "val_pct_of_oracle" in r)
    assert manifest["training"]["start_rule"]["imitated_share"] > 0.5


def test_training_is_deterministic_for_a_seed(smoke_model: Path, tmp_path: Path):
    out, _ = _train_smoke(tmp_path, "again")
    a = json.loads((smoke_model / "manifest.json").read_text())["sha256"]
    b = json.loads((out / "manifest.json").read_text())["sha256"]
    assert a == b


def test_onnx_matches_torch_on_10000_observations(smoke_model: Path):
    import torch

    from fleetpilot.training.ppo import Agent

    state = torch.load(smoke_model / "checkpoint.pt", weights_only=False)
    agent = Agent(ActionMapping().n, state["config"]["hidden"])
    agent.load_state_dict(state["agent"])
    x = np.random.default_rng(0).uniform(-1, 4, size=(10_000, OBS_DIM)).astype(np.float32)
    pol = OnnxPolicy.load(smoke_model)
    with torch.no_grad():
        expect = agent(torch.from_numpy(x)).numpy()
    assert np.array_equal(pol.actions(x), expect)


def _copy(model: Path, tmp_path: Path) -> Path:
    d = tmp_path / "m"
    shutil.copytree(model, d)
    return d


def test_sha256_mismatch_is_refused_before_loading(smoke_model: Path, tmp_path: Path):
    d = _copy(smoke_model, tmp_path)
    data = bytearray((d / "policy.onnx").read_bytes())
    data[-1] ^= 0xFF
    (d / "policy.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        OnnxPolicy.load(d)


def test_observation_version_mismatch_is_refused(smoke_model: Path, tmp_path: Path):
    d = _copy(smoke_model, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["observation"]["version"] = OBS_VERSION + 1
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="observation spec"):
        OnnxPolicy.load(d)


def test_backtest_accepts_a_model_directory(smoke_model: Path):
    r = subprocess.run(
        FLEETPILOT
        + [
            "backtest",
            "--synthetic",
            "--seeds",
            "7",
            "--minutes",
            "300",
            "--policy",
            str(smoke_model),
            "--policy",
            "oracle",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert str(smoke_model) in r.stdout


def test_policies_cli_lists_and_inspects(smoke_model: Path):
    r = subprocess.run(FLEETPILOT + ["policies", "inspect", str(smoke_model)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verified"].startswith("sha256")
    r = subprocess.run(FLEETPILOT + ["policies", "list"], capture_output=True, text=True)
    assert r.returncode == 0 and "target-tracking" in r.stdout


def test_train_refuses_bad_config(tmp_path: Path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("num_envz: 3\n")
    r = subprocess.run(
        FLEETPILOT + ["train", "--config", str(cfg), "--out", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "num_envz" in r.stderr and "Traceback" not in r.stderr


def test_action_mapping_never_removes_needed_active_machines_while_others_warm():
    """12 active, 10 warming, target 12: nothing is removed (the seed removes active machines at once)."""
    from fleetpilot.policies.observation import ObservationBuilder

    m = ActionMapping()
    b = ObservationBuilder(3, 300.0, 5)
    b.update(np.array([2400.0, 2400.0, 2400.0]), np.array([12, 30, 12]), np.array([10, 0, 0]), np.array([1, 1, 1]))
    obs = b.observation()
    obs.day_max_tpm = np.zeros(3)
    k = np.full(3, m.index(0.65, 0.0))  # target ceil(2400 / 195) = 13
    target = m.target(k, obs)
    assert list(target) == [13, 13, 13]
    # warming fleet: 22 > 13 but only active machines above the target may go: none (12 < 13)
    # idle fleet: 30 active, nothing warming: scale in to the target
    # short fleet: 12 active, nothing warming: scale out to the target
    assert list(m.desired(k, obs)) == [22, 13, 13]


def test_an_interrupted_training_resumes_from_its_checkpoint(tmp_path: Path):
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(SMOKE)
    out = tmp_path / "run"
    base = FLEETPILOT + ["train", "--config", str(cfg), "--steps", "4096", "--seed", "5", "--out", str(out)]
    first = subprocess.run(base + ["--budget-minutes", "0.00001"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1]  # the budget stopped it after one update, with a checkpoint
    second = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == list(range(1, 9))  # went on from update 2, not from scratch
    assert rows[-1]["step"] == 4096
    # the starting rule is not chosen and imitated again: it comes from the checkpoint into the manifest
    assert "starting from the rule" in first.stderr and "starting from the rule" not in second.stderr
    start = json.loads((out / "manifest.json").read_text())["training"]["start_rule"]
    assert start["main"] and start["imitated_share"] > 0.5


def test_a_second_training_into_the_same_out_is_refused_while_the_first_runs(tmp_path: Path):
    """Two trainings into one --out would interleave their checkpoints, logs and models: while one holds the
    directory (its lock held by another process here), another is one line naming it and the holder, exit 2,
    and nothing of the first is touched; once the holder is gone the directory is usable again."""
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(SMOKE)
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_log.jsonl").write_text("the first training's log\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from fleetpilot.policies.files import "
         "hold_lock; hold_lock(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)",
         str(out / ".train.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        base = FLEETPILOT + ["train", "--config", str(cfg), "--steps", "2048", "--seed", "3", "--out", str(out)]
        r = subprocess.run(base, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip() == (
            f"fleetpilot train: error: --out {out}: another training is writing there (pid {holder.pid}); "
            "wait for it or use another --out"
        )
        assert (out / "train_log.jsonl").read_text() == "the first training's log\n"
    finally:
        holder.kill()
        holder.wait()
    r = subprocess.run(base + ["--no-resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "policy.onnx").is_file()


def test_a_damaged_checkpoint_is_one_line_naming_it_and_exit_2(tmp_path: Path):
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(SMOKE)
    out = tmp_path / "run"
    out.mkdir()
    bad = b"this is not a checkpoint\n"
    (out / "checkpoint.pt").write_bytes(bad)
    r = subprocess.run(
        FLEETPILOT + ["train", "--config", str(cfg), "--steps", "2048", "--seed", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(out / "checkpoint.pt") in lines[0] and "--no-resume" in lines[0]
    assert (out / "checkpoint.pt").read_bytes() == bad  # nothing is lost: the file is left for the user


def test_checkpoint_load_refuses_what_is_not_a_training_checkpoint(smoke_model: Path, tmp_path: Path):
    import torch

    from fleetpilot.training.ppo import Checkpoint, CheckpointError

    ckpt = Checkpoint.load(smoke_model / "checkpoint.pt")
    assert ckpt.update >= 1 and ckpt.config["seed"] == 3 and ckpt.start["main"]
    other = tmp_path / "other.pt"
    torch.save({"agent": {}, "update": 3}, other)
    with pytest.raises(CheckpointError, match=r"other\.pt: not a training checkpoint \(missing config, global_step"):
        Checkpoint.load(other)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((smoke_model / "checkpoint.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: not a readable checkpoint .*--no-resume$"):
        Checkpoint.load(truncated)
    ckpt.save(tmp_path / "copy.pt")
    again = Checkpoint.load(tmp_path / "copy.pt")
    assert again.global_step == ckpt.global_step and torch.equal(again.torch_rng, ckpt.torch_rng)


def _obs_after(loads: list[float]):
    from fleetpilot.policies.observation import ObservationBuilder

    b = ObservationBuilder(1, 300.0, 5)
    for i, x in enumerate(loads):
        b.update(np.array([x]), np.array([10]), np.array([0]), np.array([i + 1]))
    obs = b.observation()
    obs.day_max_tpm = np.zeros(1)
    return obs


def test_the_base_load_averages_the_last_minutes_but_follows_a_surge_at_once():
    m = ActionMapping()  # base_minutes 3, surge_ratio 1.1
    assert m.base_load(_obs_after([900.0, 1200.0, 1000.0, 1100.0]))[0] == pytest.approx(1100.0)  # mean of 1200..1100
    assert m.base_load(_obs_after([1000.0, 950.0, 1050.0, 980.0]))[0] == pytest.approx(993.333, abs=1e-3)
    # 1500 > 1.1 x mean(1000, 1000, 1500): the surge itself is the base
    assert m.base_load(_obs_after([1000.0, 1000.0, 1000.0, 1500.0]))[0] == 1500.0


def test_manifests_of_the_first_release_keep_the_last_minute_as_their_base():
    d = ActionMapping().to_json()
    del d["base_minutes"], d["surge_ratio"]
    old = ActionMapping.from_json(d)
    assert old.base_minutes == 1
    assert old.base_load(_obs_after([1000.0, 1000.0, 1300.0]))[0] == 1300.0


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("base_minutes", 0, "base_minutes"),
        ("surge_ratio", 0.9, "surge_ratio"),
        ("utilization", [0.5, 1.5], "utilization"),
    ],
)
def test_an_action_mapping_with_impossible_values_is_refused(field, value, message):
    d = ActionMapping().to_json()
    d[field] = value
    with pytest.raises(ValueError, match=message):
        ActionMapping.from_json(d)


def test_a_higher_training_downtime_penalty_starts_from_a_more_cautious_rule():
    """The penalty training optimizes (PPOConfig.downtime_cost_usd_per_minute) moves the starting rule towards
    more machines: the fixed action chosen under $5,000 a minute keeps at least as many as under $0."""
    from fleetpilot.policies.observation import ObservationBuilder
    from fleetpilot.sim.params import FleetParams
    from fleetpilot.training.ppo import best_fixed_action

    m = ActionMapping()
    base = FleetParams()
    picks = {
        cost: best_fixed_action(m, base.model_copy(update={"downtime_cost_usd_per_minute": cost}), None, 3, 4, 3000)
        for cost in (0.0, 5000.0)
    }
    b = ObservationBuilder(1, 300.0, 5)
    b.update(np.array([3000.0]), np.array([10]), np.array([0]), np.array([1]))
    obs = b.observation()
    obs.day_max_tpm = np.array([6000.0])
    cheap, strict = (int(m.target(np.array([picks[c]]), obs)[0]) for c in (0.0, 5000.0))
    assert strict > cheap, (m.describe(picks[0.0]), m.describe(picks[5000.0]))


def test_imitation_learns_the_starting_rule_and_its_jump_window():
    """The warm start: the actor fitted to a rule with a jump window takes the rule's action on loads it was
    not fitted on, inside the windows (a minority of minutes) as well as outside."""
    import torch

    from fleetpilot.policies.cushion import RuleActions
    from fleetpilot.sim.params import FleetParams
    from fleetpilot.training.backtest import simulate
    from fleetpilot.training.ppo import Agent, PPOConfig, _draw_loads, _Recorder, imitate

    m, fleet = ActionMapping(), FleetParams()
    rule = RuleActions(m, np.array(m.index(0.76, 0.18)), np.array(m.index(0.64, 0.0)), 95, 4320)
    torch.manual_seed(0)
    agent = Agent(m.n)
    loads, starts = _draw_loads(fleet, None, 5, 8, 4000)
    assert imitate(agent, rule, fleet, loads, starts, PPOConfig(imitation_epochs=40)) > 0.98
    rec = _Recorder(rule)
    held, held_starts = _draw_loads(fleet, None, 6, 4, 4000)
    simulate(rec, held, held_starts, np.zeros(4, dtype=np.uint64), fleet)
    x, y = np.concatenate(rec.x), np.concatenate(rec.y)
    with torch.no_grad():
        got = agent(torch.from_numpy(x)).numpy()
    in_window = y == rule.jump
    assert 0.03 < in_window.mean() < 0.5
    assert (got[in_window] == y[in_window]).mean() > 0.95
    assert (got[~in_window] == y[~in_window]).mean() > 0.98
