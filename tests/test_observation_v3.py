"""Observation version 3 (issue 12): the features that tell loads apart mean what the module docstring says on
constructed loads, they stream the same whether groups move in lockstep or not, and a model reads the features
its manifest names: the shipped v2 `synthetic` model decides on the v3 builder exactly as before, a model naming an
unknown feature or one whose meaning changed is refused with one line (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleetpilot.policies.actions import ActionMapping
from fleetpilot.policies.observation import (
    DAY_MINUTES,
    FEATURE_INDEX,
    FEATURE_NAMES,
    OBS_DIM,
    OBS_VERSION,
    ObservationBuilder,
)
from fleetpilot.policies.onnx_policy import MANIFEST_FORMAT, ModelError, OnnxPolicy, sha256_of
from fleetpilot.policies.registry import MODELS_DIR

FLEETPILOT = str(Path(sys.executable).parent / "fleetpilot")
START = 28_000_000  # minutes since the epoch (a Monday in 2023): any start works
V3 = FEATURE_NAMES[26:]


def feed(loads: np.ndarray, warmup: int = 5) -> ObservationBuilder:
    """A builder fed (N, T) loads, one minute at a time, in lockstep."""
    n, t = loads.shape
    b = ObservationBuilder(n, 300.0, warmup)
    for m in range(t):
        b.update(loads[:, m], np.full(n, 20), np.zeros(n, dtype=np.int64), np.full(n, START + m))
    return b


def feature(obs, name: str) -> np.ndarray:
    return obs.features[:, FEATURE_INDEX[name]].astype(np.float64)


def test_v3_appends_seven_features():
    assert OBS_VERSION == 3 and OBS_DIM == 33
    assert V3 == ("fc_ahead", "fc_err", "fc_err_max", "rise_max", "jump_rate", "periodicity", "overdispersion")


def _loads(days: int = 3, seed: int = 0) -> np.ndarray:
    """(3, T): a smooth daily load with Poisson noise; a flat load with random news bursts (Poisson noise); the
    smooth daily load with overdispersed noise (5 x the Poisson standard deviation)."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY_MINUTES)
    daily = 6000 + 4000 * np.sin(2 * np.pi * t / DAY_MINUTES)
    bursty = np.full(t.shape, 3000.0)
    for start in rng.integers(0, t.size - 60, 10 * days):
        bursty[start : start + rng.integers(10, 60)] += rng.uniform(3000, 12000)
    return np.stack(
        [
            rng.poisson(daily).astype(np.float64),
            rng.poisson(bursty).astype(np.float64),
            np.maximum(daily + 5 * np.sqrt(daily) * rng.standard_normal(t.size), 0.0),
        ]
    )


def test_a_smooth_daily_load_reads_periodic_and_calm_a_bursty_one_the_opposite():
    obs = feed(_loads()).observation()
    period, rise, jumps = feature(obs, "periodicity"), feature(obs, "rise_max"), feature(obs, "jump_rate")
    err, err_max, od = feature(obs, "fc_err"), feature(obs, "fc_err_max"), feature(obs, "overdispersion")
    smooth, bursty, noisy = 0, 1, 2
    assert period[smooth] > 0.9 and period[bursty] < 0.1, period
    assert rise[smooth] < 0.15 and rise[bursty] > 1.0, rise
    assert jumps[smooth] == 0.0 and jumps[bursty] >= 1.0, jumps  # none vs. >= 10 jumps in the last day
    assert err[bursty] > 5 * err[smooth] and err_max[bursty] > 10 * err_max[smooth], (err, err_max)
    # Poisson noise reads about 0 (log10 of 1); 5 x its standard deviation about log10(5)
    assert abs(od[smooth]) < 0.15 and abs(od[noisy] - np.log10(5)) < 0.15, od
    # the noisy daily load is still daily, less clearly: the noise that yesterday cannot explain lowers it
    assert 0.5 < period[noisy] < period[smooth], period


def test_periodicity_reads_zero_until_a_day_and_an_hour_of_history():
    loads = _loads(days=2)[:1]
    b = ObservationBuilder(1, 300.0, 5)
    seen = []
    for m in range(loads.shape[1]):
        b.update(loads[:, m], np.array([20]), np.array([0]), np.array([START + m]))
        if m % 30 == 0:
            seen.append((m, float(feature(b.observation(), "periodicity")[0])))
    assert all(p == 0.0 for m, p in seen if m < DAY_MINUTES + 60)
    assert all(p > 0.5 for m, p in seen if m >= DAY_MINUTES + 120), seen


def test_the_forecast_is_exact_on_a_steady_ramp_and_its_error_jumps_with_the_load():
    warmup, slope = 7, 3.0
    ramp = 1000.0 + slope * np.arange(600)
    b = feed(ramp[None, :], warmup)
    obs = b.observation()
    r = b.ema_mid[0]  # R in tpm (the builder's one-hour EMA: well above one machine here)
    assert feature(obs, "fc_ahead")[0] * r == pytest.approx(ramp[-1] + warmup * slope, rel=1e-5)
    assert feature(obs, "fc_err")[0] < 1e-4 and feature(obs, "fc_err_max")[0] < 0.05
    assert obs.forecast_tpm is not None and obs.forecast_tpm[0] == pytest.approx(ramp[-1] + warmup * slope)
    # a jump of +60% of the load: the forecasts made before it miss by about the jump
    level = ramp[-1]
    for m in range(600, 610):
        b.update(np.array([1.6 * level]), np.array([20]), np.array([0]), np.array([START + m]))
    after = b.observation()
    jump_share = 0.6 * level / b.ema_mid[0]
    assert feature(after, "fc_err_max")[0] > 0.5 * jump_share, (feature(after, "fc_err_max"), jump_share)
    assert feature(after, "fc_err")[0] > 0.05 and feature(after, "rise_max")[0] > 0.5 * jump_share


def test_the_new_features_stream_the_same_with_missed_minutes_and_resets():
    """Group 1 of a pair misses minutes (gaps filled by the builder), is reset once, and takes the rest;
    a builder of that group alone, fed the same samples, reads the same features bit for bit (the pair takes
    the builder's partial-update paths, the single one its lockstep path)."""
    loads = _loads(days=2, seed=3)[:2]
    rng = np.random.default_rng(1)
    take = rng.uniform(size=loads.shape[1]) > 0.1
    pair = ObservationBuilder(2, 300.0, 5)
    alone = ObservationBuilder(1, 300.0, 5)
    for m in range(loads.shape[1]):
        both = np.array([True, take[m]])
        machines = (np.full(2, 20), np.zeros(2, dtype=np.int64))
        pair.update_where(both, loads[:, m], *machines, np.full(2, START + m))
        if take[m]:
            alone.update(loads[1:, m], np.array([20]), np.array([0]), np.array([START + m]))
        if m == 700:
            pair.reset(np.array([1]))
            alone.reset()
    a, b = pair.observation().features[1], alone.observation().features[0]
    assert np.array_equal(a, b), {FEATURE_NAMES[i]: (a[i], b[i]) for i in np.nonzero(a != b)[0]}
    assert a[FEATURE_INDEX["periodicity"]] > 0.0  # the history after the reset still reaches a day


# --- models read the features their manifest names -------------------------------------------------------------
def write_linear_model(d: Path, names: list[str], version: int, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A model directory whose policy.onnx computes logits = features @ W (features: the named columns)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = ActionMapping().n
    w = np.random.default_rng(seed).normal(0, 0.5, size=(len(names), n)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits"]),
            helper.make_node("ArgMax", ["logits"], ["action"], axis=1, keepdims=0),
        ],
        "linear",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", len(names)])],
        [
            helper.make_tensor_value_info("action", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n]),
        ],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    d.mkdir(parents=True)
    onnx.save(model, d / "policy.onnx")
    manifest = {
        "format_version": MANIFEST_FORMAT,
        "name": d.name,
        "model_file": "policy.onnx",
        "sha256": sha256_of(d / "policy.onnx"),
        "observation": {"version": version, "dim": len(names), "features": names},
        "action_mapping": ActionMapping().to_json(),
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d, w


@pytest.mark.parametrize(
    "names, version",
    [
        (list(FEATURE_NAMES[:26]), 2),  # a model of the previous version: the first 26 features
        (["periodicity", "load", "fc_ahead", "noise", "rise_max"], 3),  # a subset, in its own order
        (list(FEATURE_NAMES), 3),
    ],
    ids=["v2", "v3-subset", "v3-all"],
)
def test_a_model_reads_the_columns_it_names(tmp_path, names, version):
    d, w = write_linear_model(tmp_path / "m", names, version)
    policy = OnnxPolicy.load(d)
    features = feed(_loads(days=1)).observation().features
    x = features[:, [FEATURE_INDEX[n] for n in names]]
    assert np.array_equal(policy.actions(features), np.argmax(x @ w, axis=1))
    if len(names) < OBS_DIM:
        with pytest.raises(ValueError, match=f"expected \\(N, {OBS_DIM}\\) features"):
            policy.actions(x)  # a caller passes the builder's features, never pre-selected ones


def test_a_model_whose_graph_disagrees_with_its_manifest_is_refused(tmp_path):
    d, _ = write_linear_model(tmp_path / "m", list(FEATURE_NAMES[:26]), 2)
    m = json.loads((d / "manifest.json").read_text())
    m["observation"].update(dim=25, features=list(FEATURE_NAMES[:25]))
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="observation.dim is 25"):
        OnnxPolicy.load(d)


def test_the_shipped_v2_synthetic_model_reads_its_26_features_by_name_and_decides_as_before():
    """The shipped `synthetic` model (the `default` until the newsvendor-family one; observation v2) is served by the v3 builder without retraining: it reads the first
    26 columns by name, and its backtest on the shipped-model check case is what the v2 build measured before
    the version-3 features were added (`fleetpilot backtest --synthetic --seeds 3000..3001 --minutes 2000
    --policy synthetic --json`, profit $9,954.89, E[profit] $9,856.89, no downtime minute)."""
    from fleetpilot.training.backtest import backtest, synthetic_run

    manifest = json.loads((MODELS_DIR / "synthetic" / "manifest.json").read_text())
    assert manifest["observation"]["version"] == 2 and manifest["observation"]["features"] == list(FEATURE_NAMES[:26])
    policy = OnnxPolicy.load(MODELS_DIR / "synthetic")
    assert policy.columns is not None and list(policy.columns) == list(range(26))
    report = backtest([synthetic_run(s, 2000) for s in (3000, 3001)], {"synthetic": policy})
    (s,) = report.summary
    assert s["profit_usd"] == pytest.approx(9954.89, abs=0.02), s
    assert s["expected_profit_usd"] == pytest.approx(9856.89, abs=0.02), s
    assert s["downtime_minutes"] == 0, s


def test_policies_inspect_names_what_a_model_reads_and_refuses_an_unknown_feature(tmp_path):
    p = subprocess.run([FLEETPILOT, "policies", "inspect", "synthetic"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "reads 26 of this build's 33 features" in json.loads(p.stdout)["verified"]
    d, _ = write_linear_model(tmp_path / "m", [*FEATURE_NAMES[:5], "queue_depth"], 3)
    p = subprocess.run([FLEETPILOT, "policies", "inspect", str(d)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == "", (p.returncode, p.stdout)
    (line,) = p.stderr.strip().splitlines()
    assert "'queue_depth' is not a feature of this build" in line and str(d) in line, line
