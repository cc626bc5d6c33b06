"""Export the deterministic actor to ONNX (built node by node with `onnx.helper`) and write the manifest.

The graph: features (N, OBS_DIM) float32 -> Gemm -> Tanh -> Gemm -> Tanh -> Gemm = logits (N, A) -> ArgMax =
action (N,) int64. No observation normalization to fold: the builder's features are already scaled.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from fleetpilot.policies.observation import FEATURE_NAMES, OBS_DIM, OBS_VERSION
from fleetpilot.policies.onnx_policy import MANIFEST_FORMAT, sha256_of

OPSET = 17


def actor_to_onnx(agent, path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    linears = [m for m in agent.actor if m.__class__.__name__ == "Linear"]
    inits, nodes = [], []
    x = "features"
    for i, lin in enumerate(linears):
        w = lin.weight.detach().cpu().numpy().astype(np.float32)
        b = lin.bias.detach().cpu().numpy().astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "logits" if i == len(linears) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out], transB=1))
        if i < len(linears) - 1:
            nodes.append(helper.make_node("Tanh", [out], [f"t{i}"]))
            out = f"t{i}"
        x = out
    nodes.append(helper.make_node("ArgMax", ["logits"], ["action"], axis=1, keepdims=0))
    n_actions = linears[-1].weight.shape[0]
    graph = helper.make_graph(
        nodes,
        "fleetpilot_actor",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", OBS_DIM])],
        [
            helper.make_tensor_value_info("action", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_actions]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fleetpilot")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def write_model(agent, mapping, out_dir: Path, name: str, simulator: dict, training: dict, validation: dict) -> Path:
    """policy.onnx + manifest.json in out_dir; returns the manifest path."""
    if not agent.masked():  # a bug, not bad input: the actor was trained to ignore these features
        raise RuntimeError("the actor's first layer reads features its actor_features leave out; not exported")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = out_dir / "policy.onnx"
    actor_to_onnx(agent, model)
    try:
        from importlib.metadata import version

        fp_version = version("fleetpilot")
    except Exception:  # not installed: a checkout
        fp_version = "0+unknown"
    manifest = {
        "format_version": MANIFEST_FORMAT,
        "name": name,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fleetpilot_version": fp_version,
        "model_file": model.name,
        "sha256": sha256_of(model),
        "observation": {"version": OBS_VERSION, "dim": OBS_DIM, "features": list(FEATURE_NAMES)},
        "inputs": {"features": {"dtype": "float32", "shape": ["N", OBS_DIM]}},
        "outputs": {
            "action": {"dtype": "int64", "shape": ["N"]},
            "logits": {"dtype": "float32", "shape": ["N", mapping.n]},
        },
        "action_mapping": mapping.to_json(),
        "simulator": simulator,
        "training": training,
        "validation": validation,
    }
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
