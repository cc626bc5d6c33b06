"""Simulator speed, side by side (a print, not a test): issue 2's target is >= 1,000,000 fleet-steps/s for the
vector env at 1,024 fleets on a 2-core machine.

(a) `seed-port`: a direct per-step port of the seed simulator (the SageMaker RL example's
    `SimpleScalableWebserviceSim` + `LoadSimulator` as DESIGN.md describes them): plain Python/numpy per step,
    the global numpy RNG, observations from exponential moving averages scaled by the 100,000 tpm maximum;
(b) `per-step env`: `training.env.WebFleetEnv` (one fleet, the shared numpy core and observation builder);
(c) `vector env`: `training.env.WebFleetVectorEnv` with 1,024 fleets stepped together.

Each figure is the median of several repeats (the machine may be shared); actions are random and drawn
before the timed loop. The envs are first stepped `--warm-minutes` (1,500) untimed minutes, past the first
simulated day, so the timed minutes compute the day-ago features as most minutes of an episode do; the
repeats are consecutive chunks of one episode (no reset or autoreset is timed). Run:

    .venv/bin/python benchmarks/sim_bench.py [--repeats 7] [--fleets 1024] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

TARGET_VECTOR_STEPS_PER_S = 1_000_000


class SeedLoadSimulator:
    """The seed's `LoadSimulator`, one minute per call, global numpy RNG (kept as in the seed on purpose)."""

    def __init__(self, max_tpm: float = 100_000.0):
        self.max_tpm = max_tpm
        self.cyclic_min = np.random.uniform(1000, 2000)
        self.cyclic_max = self.cyclic_min + np.random.uniform(5000, 7000)
        self.noise = np.random.uniform(0.01, 0.05)
        self.phase = np.random.uniform(-np.pi, np.pi)
        self.lf_amp = np.random.uniform(0.1, 0.2)
        self.lf_period = np.random.uniform(2, 5)
        self.lf_phase = np.random.uniform(-np.pi, np.pi)
        self.t = 0
        self._new_spike()

    def _new_spike(self) -> None:
        self.spike_countdown = np.random.uniform(100, 1000)
        self.spike_width = 5 + np.random.lognormal(3, 2)
        self.spike_height = self.cyclic_max * np.random.uniform(0.1, 0.2)

    def time_step_load(self) -> float:
        self.t += 1
        phase = self.t / 720.0 * math.pi + self.phase
        cyclic = (self.cyclic_min + self.cyclic_max) / 2 + (self.cyclic_max - self.cyclic_min) / 2 * math.sin(phase)
        cyclic *= 1 + math.sin(phase / self.lf_period + self.lf_phase) * self.lf_amp
        cyclic *= np.random.normal(1.0, self.noise)
        self.spike_countdown -= 1
        spike = 0.0
        if self.spike_countdown <= 0:
            spike = self.spike_height * (1 + self.spike_countdown / self.spike_width)
            if spike < 0:
                spike = 0.0
                self._new_spike()
        return float(min(max(cyclic + spike, 0.0), self.max_tpm))


class SeedWebserviceSim:
    """The seed's `SimpleScalableWebserviceSim`, ported per step: a continuous (add, remove) action cast to int,
    a warm-up queue list, capacity = int(active x Normal(300, 30)) from the global RNG, EMA observations."""

    def __init__(
        self,
        warmup=5,
        tpm=300.0,
        sigma=30.0,
        machine_cost=0.05,
        transaction_val=0.9 / 1000,
        downtime_cost=200.0,
        downtime_percent=99.5,
        initial_machines=50,
        max_tpm=100_000.0,
        max_delta=10,
        max_steps=10_000,
    ):
        self.warmup, self.tpm, self.sigma = warmup, tpm, sigma
        self.machine_cost, self.transaction_val, self.downtime_cost = machine_cost, transaction_val, downtime_cost
        self.downtime_share = downtime_percent / 100.0
        self.initial_machines, self.max_tpm, self.max_delta = initial_machines, max_tpm, max_delta
        self.max_machines = int(2.5 * max_tpm / tpm)
        self.max_steps = max_steps

    def reset(self) -> np.ndarray:
        self.load_sim = SeedLoadSimulator(self.max_tpm)
        self.active = self.initial_machines
        self.queue = [0] * self.warmup
        self.t = 0
        self.load = self.load_sim.time_step_load()
        self.ema_fast = self.ema_slow = self.load
        self.failed = 0.0
        self.down = 0.0
        return self._observation()

    def _observation(self) -> np.ndarray:
        m = self.max_tpm
        return np.array(
            [
                self.load / m,
                self.ema_fast / m,
                self.ema_slow / m,
                self.active * self.tpm / m,
                sum(self.queue) * self.tpm / m,
                self.failed,
                self.down,
            ],
            dtype=np.float32,
        )

    def step(self, action):
        add = int(np.clip(action[0], 0, self.max_delta))
        remove = int(np.clip(action[1], 0, self.max_delta))
        self.active = max(self.active - remove, 0)
        self.queue.append(add)
        self.active = min(self.active + self.queue.pop(0), self.max_machines)
        self.t += 1
        self.load = load = self.load_sim.time_step_load()
        capacity = int(self.active * np.random.normal(self.tpm, self.sigma))
        served = min(load, capacity)
        self.failed = (load - served) / (load + 1e-5)
        self.down = float(served / (load + 1e-20) < self.downtime_share)
        reward = served * self.transaction_val - self.active * self.machine_cost - self.down * self.downtime_cost
        self.ema_fast += 0.3 * (load - self.ema_fast)
        self.ema_slow += 0.01 * (load - self.ema_slow)
        done = self.t >= self.max_steps
        return self._observation(), reward, done, {}


_clock = time.perf_counter  # --cpu-time switches to time.process_time (for a machine shared with other jobs)


def _median_rate(fn, repeats: int) -> tuple[float, list[float]]:
    rates = [fn() for _ in range(repeats)]
    return statistics.median(rates), rates


def bench_seed(steps: int, repeats: int) -> tuple[float, list[float]]:
    np.random.seed(0)
    sim = SeedWebserviceSim()
    actions = np.random.uniform(0, 10, size=(steps, 2))

    def once() -> float:
        sim.reset()
        t0 = _clock()
        for a in actions:
            sim.step(a)
        return steps / (_clock() - t0)

    return _median_rate(once, repeats)


def _step_rate(env, actions, fleets: int, repeats: int, warm: int) -> tuple[float, list[float]]:
    """Reset `env` (seed 0), step it `warm` times, then time passes over `actions`: median fleet-steps/s."""
    env.reset(seed=0)
    for t in range(warm):
        env.step(actions[t % len(actions)])

    def once() -> float:
        t0 = _clock()
        for a in actions:
            env.step(a)
        return len(actions) * fleets / (_clock() - t0)

    return _median_rate(once, repeats)


def bench_env(steps: int, repeats: int, warm: int) -> tuple[float, list[float]]:
    from fleetpilot.training.env import WebFleetEnv

    env = WebFleetEnv(episode_minutes=warm + steps * repeats + 1)
    actions = [int(a) for a in np.random.default_rng(0).integers(0, env.action_space.n, size=steps)]
    return _step_rate(env, actions, 1, repeats, warm)


def bench_vector(fleets: int, steps: int, repeats: int, warm: int) -> tuple[float, list[float]]:
    from fleetpilot.training.env import WebFleetVectorEnv

    env = WebFleetVectorEnv(fleets, episode_minutes=warm + steps * repeats + 1)
    actions = np.random.default_rng(0).integers(0, 2 * env.d + 1, size=(steps, fleets))
    return _step_rate(env, actions, fleets, repeats, warm)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats per simulator (median reported)")
    ap.add_argument("--fleets", type=int, default=1024, help="fleets in the vector env")
    ap.add_argument("--seed-steps", type=int, default=20_000, help="steps per repeat of the seed port")
    ap.add_argument("--env-steps", type=int, default=1_000, help="steps per repeat of the per-step env")
    ap.add_argument("--vector-steps", type=int, default=1_000, help="vector steps per repeat (x fleets)")
    ap.add_argument(
        "--warm-minutes",
        type=int,
        default=1500,
        help="untimed steps before timing, past the first simulated day so that the seasonal "
        "(day-ago) features are computed as in most of an episode; 0 times the first day",
    )
    ap.add_argument("--json", metavar="FILE", help="also write the figures as one flat JSON object")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="divide by this process's CPU time instead of wall time (steadier on a shared machine)",
    )
    args = ap.parse_args(argv)
    global _clock
    if args.cpu_time:
        _clock = time.process_time

    seed, seed_all = bench_seed(args.seed_steps, args.repeats)
    env, env_all = bench_env(args.env_steps, args.repeats, args.warm_minutes)
    vec, vec_all = bench_vector(args.fleets, args.vector_steps, args.repeats, args.warm_minutes)

    rows = [
        ("seed port (per step, global RNG)", seed, seed_all),
        ("WebFleetEnv (per step)", env, env_all),
        (f"WebFleetVectorEnv ({args.fleets} fleets)", vec, vec_all),
    ]
    print(f"clock: {'CPU time of this process' if args.cpu_time else 'wall time'}; median of {args.repeats} repeats")
    print(f"{'simulator':<36} {'steps/s (median)':>17} {'x seed port':>12} {'x per-step env':>15}   min..max")
    for name, rate, all_ in rows:
        print(
            f"{name:<36} {rate:>17,.0f} {rate / seed:>12.2f} {rate / env:>15.2f}   {min(all_):,.0f}..{max(all_):,.0f}"
        )
    ok = vec >= TARGET_VECTOR_STEPS_PER_S
    print(
        f"target: vector env >= {TARGET_VECTOR_STEPS_PER_S:,} fleet-steps/s: {'met' if ok else 'NOT met'} ({vec:,.0f})"
    )
    if args.json:
        figures = {"repeats": args.repeats, "fleets": args.fleets, "clock": "cpu" if args.cpu_time else "wall"}
        for key, (_, rate, all_) in zip(("seed_port", "per_step_env", "vector_env"), rows, strict=True):
            figures[f"{key}_steps_per_s_p50"] = rate
            figures[f"{key}_steps_per_s_min"] = min(all_)
            figures[f"{key}_steps_per_s_max"] = max(all_)
        figures |= {"target_vector_steps_per_s": TARGET_VECTOR_STEPS_PER_S, "target_met": ok}
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
