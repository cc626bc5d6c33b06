"""Inference latency: onnxruntime vs torch eager on the policy network, one decision and a batch of 10,000.

.venv/bin/python benchmarks/inference_bench.py [--model policies/models/default] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def timings(fn, x, n: int) -> list[float]:
    for _ in range(min(n, 200)):
        fn(x)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from fleetpilot.policies.actions import ActionMapping
    from fleetpilot.policies.observation import OBS_DIM
    from fleetpilot.policies.onnx_policy import OnnxPolicy
    from fleetpilot.training.export import write_model
    from fleetpilot.training.ppo import Agent

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "policies" / "models" / "default"))
    ap.add_argument("--single", type=int, default=20_000, help="timed single decisions per engine")
    ap.add_argument("--batches", type=int, default=200, help="timed batches of 10,000 per engine")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as one flat JSON object")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    mapping = ActionMapping()
    agent = Agent(mapping.n, generator=torch.Generator().manual_seed(0))
    model_dir = Path(a.model)
    ckpt = model_dir / "checkpoint.pt"
    tmp = None
    if (model_dir / "manifest.json").is_file() and ckpt.is_file():
        agent.load_state_dict(torch.load(ckpt, weights_only=False)["agent"])
    elif not (model_dir / "manifest.json").is_file():
        tmp = tempfile.TemporaryDirectory()
        model_dir = Path(tmp.name)
        write_model(agent, mapping, model_dir, "bench", {}, {}, {})
    pol = OnnxPolicy.load(model_dir)
    rng = np.random.default_rng(0)
    one = rng.uniform(0, 2, (1, OBS_DIM)).astype(np.float32)
    big = rng.uniform(0, 2, (10_000, OBS_DIM)).astype(np.float32)

    def torch_fn(x):
        with torch.no_grad():
            return agent(torch.from_numpy(x)).numpy()

    rows, figures = [], {"single_decisions": a.single, "batches_of_10000": a.batches}
    for label, key, fn in (("onnxruntime", "onnx", pol.actions), ("torch eager", "torch", torch_fn)):
        s = timings(fn, one, a.single)
        b = timings(fn, big, a.batches)
        rows.append((label, statistics.median(s) * 1e6, np.percentile(s, 99) * 1e6, statistics.median(b) * 1e3))
        figures[f"{key}_single_us_p50"] = rows[-1][1]
        figures[f"{key}_single_us_p99"] = float(rows[-1][2])
        figures[f"{key}_batch_10000_ms_p50"] = rows[-1][3]
    print(f"{'engine':<13} {'single p50 us':>14} {'single p99 us':>14} {'batch 10k ms':>13}")
    for r in rows:
        print(f"{r[0]:<13} {r[1]:>14.1f} {r[2]:>14.1f} {r[3]:>13.2f}")
    print(f"torch/onnx single p50: {rows[1][1] / rows[0][1]:.1f}x; batch: {rows[1][3] / rows[0][3]:.1f}x")
    print("targets: ONNX single p99 <= 100 us; batch of 10,000 <= 10 ms")
    if tmp:
        tmp.cleanup()
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
