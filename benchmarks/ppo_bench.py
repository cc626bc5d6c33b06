"""PPO training throughput: fleetpilot's PPO on the numpy vector env vs stable-baselines3 PPO on the per-step env,
at equal experience and equal update work.

Both collect the same fleet-minutes (`--steps`) in rollouts of the same size (`--num-envs` x `--rollout-minutes`
fleet-minutes; stable-baselines3 steps its one env that many minutes) and make the same passes over each
rollout (`--epochs`) in the same number of minibatches of the same size (`--minibatches`), with the same
hyperparameters (gamma, GAE lambda, learning rate, clip, loss weights, gradient clipping) and the same
network (two hidden layers of 64 tanh units, separate actor and critic). What differs is the simulator
(1 fleet per step in Python vs `--num-envs` fleets per numpy step) and the action set (stable-baselines3:
the env's 21 machine deltas; fleetpilot: its 108 utilization-cushion actions). Each figure is the median of
`--repeats` runs, timing the training loop only (fleetpilot: after its starting rule is set up).

    .venv/bin/python benchmarks/ppo_bench.py [--steps 16384] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _config(a: argparse.Namespace):
    from fleetpilot.training.ppo import PPOConfig

    # a fixed starting rule, imitated on one load: choosing and imitating it is set-up, not PPO throughput
    return PPOConfig(
        total_steps=a.steps,
        num_envs=a.num_envs,
        num_steps=a.rollout_minutes,
        update_epochs=a.epochs,
        num_minibatches=a.minibatches,
        episode_minutes=a.episode_minutes,
        eval_every_updates=10**9,
        init_action="0.75,0.15",
        init_jump_window_minutes=0,
        init_loads=1,
        imitation_epochs=1,
        threads=2,
    )


def ours(a: argparse.Namespace) -> float:
    """fleetpilot PPO: steps/s of its training loop (the last log row's, timed after the set-up)."""
    from fleetpilot.training.ppo import train

    with tempfile.TemporaryDirectory() as d:
        train(_config(a), Path(d), val_runs=[], progress=False, resume=False)
        rows = (Path(d) / "train_log.jsonl").read_text().splitlines()
        return float(json.loads(rows[-1])["steps_per_s"])


def sb3(a: argparse.Namespace) -> float:
    """stable-baselines3 PPO with fleetpilot's rollout size, epochs, minibatches and hyperparameters: steps/s."""
    import torch
    from stable_baselines3 import PPO

    from fleetpilot.training.env import WebFleetEnv

    cfg = _config(a)
    rollout = cfg.num_envs * cfg.num_steps
    torch.set_num_threads(cfg.threads)
    model = PPO(
        "MlpPolicy",
        WebFleetEnv(episode_minutes=cfg.episode_minutes),
        n_steps=rollout,
        batch_size=rollout // cfg.num_minibatches,
        n_epochs=cfg.update_epochs,
        learning_rate=cfg.learning_rate,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_coef,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
        policy_kwargs={"net_arch": [cfg.hidden, cfg.hidden]},
        seed=0,
        verbose=0,
        device="cpu",
    )
    steps = (cfg.total_steps // rollout or 1) * rollout  # fleetpilot runs whole rollouts: as many steps here
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    return steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16_384, help="fleet-minutes of experience per run, both (16384)")
    ap.add_argument("--num-envs", type=int, default=256, help="fleetpilot's fleets per vector step (256)")
    ap.add_argument("--rollout-minutes", type=int, default=32, help="minutes per fleet in a rollout (32)")
    ap.add_argument("--epochs", type=int, default=4, help="passes over each rollout, both (4)")
    ap.add_argument("--minibatches", type=int, default=4, help="minibatches per pass, both (4)")
    ap.add_argument("--episode-minutes", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each; the medians are reported (3)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as one flat JSON object")
    a = ap.parse_args(argv)
    rollout = a.num_envs * a.rollout_minutes
    if rollout % a.minibatches:
        ap.error(f"the rollout ({rollout} fleet-minutes) must divide into --minibatches {a.minibatches}")
    steps = (a.steps // rollout or 1) * rollout
    o = [ours(a) for _ in range(a.repeats)]
    s = [sb3(a) for _ in range(a.repeats)]
    mo, ms = statistics.median(o), statistics.median(s)
    updates = steps // rollout
    work = (
        f"each: {steps:,} fleet-minutes in {updates} rollout(s) of {rollout:,}; {a.epochs} epochs x "
        f"{a.minibatches} minibatches of {rollout // a.minibatches:,} = {updates * a.epochs * a.minibatches} "
        "gradient steps"
    )
    print(f"equal experience and equal update work; {work}")
    for label, rate in (
        (f"fleetpilot PPO (vector env, {a.num_envs} fleets)", mo),
        ("stable-baselines3 PPO (per-step env)", ms),
    ):
        print(f"{label:<42} {rate:10,.0f} steps/s  (median of {a.repeats})")
    print(f"ratio: {mo / ms:.1f}x  (target: at least 10x)")
    if a.json:
        figures = {
            "steps": steps,
            "rollout_steps": rollout,
            "rollouts": updates,
            "update_epochs": a.epochs,
            "num_minibatches": a.minibatches,
            "minibatch_size": rollout // a.minibatches,
            "gradient_steps": updates * a.epochs * a.minibatches,
            "fleetpilot_num_envs": a.num_envs,
            "repeats": a.repeats,
            "fleetpilot_steps_per_s_p50": mo,
            "sb3_steps_per_s_p50": ms,
            "ratio_p50": mo / ms,
        }
        Path(a.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
