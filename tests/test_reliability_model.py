"""Fault matrix, the model file: missing, corrupt, another observation spec, sha256 mismatch, NaN output.

A tiny real ONNX model (OBS_DIM features -> 40 logits, argmax) is written with the `onnx` package (no torch) with a
manifest as training/export.py writes it. `fleetpilot run` refuses a model that fails verification with one
line and exit code 2, before any decision; a model whose output is not finite sends its groups to the
fallback rule and the daemon goes on.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from fleetpilot.controller.config import DaemonConfig
from fleetpilot.controller.daemon import Daemon
from fleetpilot.controller.journal import read_decisions
from fleetpilot.policies.actions import ActionMapping
from fleetpilot.policies.observation import FEATURE_NAMES, OBS_DIM, OBS_VERSION
from fleetpilot.policies.onnx_policy import MANIFEST_FORMAT, sha256_of

FLEETPILOT = str(Path(sys.executable).parent / "fleetpilot")


def write_model(d: Path, nan: bool = False, obs_version: int = OBS_VERSION) -> Path:
    """A model directory: policy.onnx (features -> logits = features @ W + b, action = argmax) + manifest."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = ActionMapping().n
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, size=(OBS_DIM, n)).astype(np.float32)
    b = np.zeros(n, dtype=np.float32)
    if nan:
        b[:] = np.nan
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["action"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-policy",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", OBS_DIM])],
        [
            helper.make_tensor_value_info("action", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n]),
        ],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(model, d / "policy.onnx")
    manifest = {
        "format_version": MANIFEST_FORMAT,
        "name": d.name,
        "model_file": "policy.onnx",
        "sha256": sha256_of(d / "policy.onnx"),
        "observation": {"version": obs_version, "dim": OBS_DIM, "features": list(FEATURE_NAMES)},
        "action_mapping": ActionMapping().to_json(),
    }
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return d


def write_config(tmp_path: Path, policy: str) -> Path:
    p = tmp_path / "fleetpilot.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "interval_seconds": 0.05,
                "journal_path": "journal.sqlite",
                "server": {"host": "127.0.0.1", "port": 0},
                "groups": [
                    {
                        "name": "web",
                        "policy": policy,
                        "source": {"kind": "simulator", "seed": 0},
                        "backend": {"kind": "simulated", "seed": 0},
                    }
                ],
            }
        )
    )
    return p


def run_once(cfg: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FLEETPILOT, "run", "--config", str(cfg), "--once", "--quiet"], capture_output=True, text=True, timeout=60
    )


def test_a_good_model_decides(tmp_path):
    model = write_model(tmp_path / "model")
    p = run_once(write_config(tmp_path, str(model)))
    assert p.returncode == 0, p.stderr
    (row,) = read_decisions(tmp_path / "journal.sqlite")
    assert row["action"] == "policy" and 0 <= row["raw_action"] < ActionMapping().n


def _corrupt(d: Path) -> None:
    """Garbage bytes whose sha256 the manifest matches: only onnxruntime can tell."""
    (d / "policy.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    m = json.loads((d / "manifest.json").read_text())
    m["sha256"] = sha256_of(d / "policy.onnx")
    (d / "manifest.json").write_text(json.dumps(m))


def _flip_a_byte(d: Path) -> None:
    data = bytearray((d / "policy.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "policy.onnx").write_bytes(bytes(data))


CASES = [
    ("missing-dir", lambda d: None, "no such model directory"),
    ("missing-onnx", lambda d: (d / "policy.onnx").unlink(), "model file policy.onnx is missing"),
    ("missing-manifest", lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    ("manifest-not-json", lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON"),
    ("corrupt", _corrupt, "onnxruntime cannot load it"),
    ("sha256", _flip_a_byte, "sha256"),
    ("obs-version", None, f"this build builds v{OBS_VERSION}"),
    ("unknown-feature", None, "'moon_phase' is not a feature of this build"),
    ("changed-meaning", None, "'fc_ahead' means something else since observation spec v3"),
    ("features-vs-dim", None, "observation.features: 2 names but observation.dim is"),
]


def _edit_observation(d: Path, **changes) -> Path:
    m = json.loads((d / "manifest.json").read_text())
    m["observation"].update(changes)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def bad_model(tmp_path: Path, case: str, damage) -> Path:
    if case == "missing-dir":
        write_model(tmp_path / "models")  # a model in the parent must not be picked up instead
        return tmp_path / "models" / "nope"
    if case == "obs-version":
        return write_model(tmp_path / "model", obs_version=OBS_VERSION + 1)
    if case == "unknown-feature":  # a model naming a feature this build does not compute
        return _edit_observation(write_model(tmp_path / "model"), features=[*FEATURE_NAMES[:-1], "moon_phase"])
    if case == "changed-meaning":  # a v2 model that claims a feature whose (present) meaning came with v3
        names = [*FEATURE_NAMES[:25], "fc_ahead"]
        return _edit_observation(write_model(tmp_path / "model"), version=2, dim=26, features=names)
    if case == "features-vs-dim":
        return _edit_observation(write_model(tmp_path / "model"), features=["load", "lag1"])
    model = write_model(tmp_path / "model")
    damage(model)
    return model


@pytest.mark.parametrize("case, damage, reason", CASES, ids=[c[0] for c in CASES])
def test_a_bad_model_is_refused_before_any_decision(tmp_path, case, damage, reason, monkeypatch):
    import onnxruntime

    from fleetpilot.policies.onnx_policy import ModelError
    from fleetpilot.policies.registry import PolicyError

    sessions = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: sessions.append(1) or real(*a, **k))
    model = bad_model(tmp_path, case, damage)
    cfg = DaemonConfig(
        interval_seconds=0.01,
        journal_path=tmp_path / "j.sqlite",
        groups=[
            {
                "name": "web",
                "policy": str(model),
                "source": {"kind": "simulator", "seed": 0},
                "backend": {"kind": "simulated", "seed": 0},
            }
        ],
    )
    with pytest.raises((ModelError, PolicyError), match=reason) as info:
        Daemon(cfg, CollectorRegistry())
    assert "\n" not in str(info.value)
    # a model that fails verification never reaches onnxruntime (only the corrupt one, whose sha256 matches)
    assert len(sessions) == (1 if case == "corrupt" else 0)
    assert not (tmp_path / "j.sqlite").exists() or not read_decisions(tmp_path / "j.sqlite")


_CLI_CASES = ("missing-dir", "sha256", "unknown-feature", "changed-meaning")


@pytest.mark.parametrize("case, damage, reason", [c for c in CASES if c[0] in _CLI_CASES], ids=list(_CLI_CASES))
def test_fleetpilot_run_refuses_a_bad_model_with_one_line_and_exit_2(tmp_path, case, damage, reason):
    p = run_once(write_config(tmp_path, str(bad_model(tmp_path, case, damage))))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr[-2000:]
    # the JSON log lines of the start (the config) come first; the refusal is one plain line, the last
    assert lines[-1].startswith("fleetpilot run: error: ") and reason in lines[-1], lines[-1]
    assert all(json.loads(line) for line in lines[:-1]) and "Traceback" not in p.stderr
    journal = tmp_path / "journal.sqlite"
    assert (
        not journal.exists() or sqlite3.connect(journal).execute("SELECT count(*) FROM decisions").fetchone()[0] == 0
    )  # no decision was made


def test_a_model_answering_nan_falls_back_and_the_daemon_goes_on(tmp_path, caplog):
    """A real ONNX model whose logits are NaN: OnnxPolicy refuses the output, the groups use the fallback
    rule, counted, logged once for the streak."""
    caplog.set_level(logging.INFO)
    model = write_model(tmp_path / "nan-model", nan=True)
    cfg = DaemonConfig(
        interval_seconds=0.01,
        journal_path=tmp_path / "j.sqlite",
        groups=[
            {
                "name": "web",
                "policy": str(model),
                "source": {"kind": "simulator", "seed": 0},
                "backend": {"kind": "simulated", "seed": 0},
            }
        ],
    )
    d = Daemon(cfg, CollectorRegistry())
    d.backfill()
    assert [d.run_tick() for _ in range(5)] == ["partial"] * 5
    d.close()
    rows = read_decisions(tmp_path / "j.sqlite")
    assert all(r["action"] == "fallback" and r["guards"][0] == "fallback:model_error" for r in rows)
    assert d.registry.get_sample_value("fleetpilot_fallbacks_total", {"group": "web", "cause": "model_error"}) == 5
    failed = [r for r in caplog.records if r.getMessage().startswith("policy failed")]
    assert len(failed) == 1 and "non-finite" in failed[0].error


def test_missing_shipped_default_runs_on_the_fallback_rule(tmp_path, monkeypatch):
    """Package data removed: `default` is unknown, its groups run on their fallback rule and it is counted."""
    import fleetpilot.policies.registry as registry

    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path / "no-models")
    cfg = DaemonConfig(
        interval_seconds=0.01,
        journal_path=tmp_path / "j.sqlite",
        groups=[
            {
                "name": "web",
                "policy": "default",
                "fallback_policy": "target-tracking",
                "min_machines": 1,
                "max_machines": 833,
                "source": {"kind": "simulator", "seed": 0},
                "backend": {"kind": "simulated", "seed": 0, "initial_machines": 50},
            }
        ],
    )
    reg = CollectorRegistry()
    d = Daemon(cfg, reg)
    d.backfill()
    assert d.run_tick() in ("ok", "partial")
    d.close()
    assert reg.get_sample_value("fleetpilot_fallbacks_total", {"group": "web", "cause": "model_unavailable"}) == 1
