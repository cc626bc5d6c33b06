"""Fan-out on Ray against the in-process run, on this machine (a print and a JSON file, not a test).

(a) start: seconds for `ray.init` to start a private single-node Ray (`--ray local`) with `--cpus` CPUs;
(b) per-task overhead: `--tasks` (200) empty items through `training.fanout.map_tasks`, after a warm-up that
    starts the workers: wall seconds per task on Ray and in process (the floor of the fan-out itself);
(c) speed-up: a `tune` grid (`--policy`, default predictive: 16 points) on synthetic seeds `--seeds` of
    `--minutes` minutes each, in process then on Ray; the two results are checked equal. The figure is
    in-process seconds / Ray seconds, each the best of `--repeats`. On a 2-core machine the bound is 2x.

The machine may be shared: the 1-minute load average before and after is in the JSON. Run:

    .venv/bin/python benchmarks/ray_bench.py [--cpus 2] [--tasks 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _noop(x):
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray node")
    ap.add_argument("--tasks", type=int, default=200, help="empty tasks for the per-task overhead")
    ap.add_argument("--policy", default="predictive", help="the tune grid timed")
    ap.add_argument("--seeds", default="0,1", help="synthetic seeds of the tune runs")
    ap.add_argument("--minutes", type=int, default=3000, help="minutes per tune run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from fleetpilot.training.backtest import synthetic_run
    from fleetpilot.training.fanout import map_tasks
    from fleetpilot.training.tune import GRIDS, tune

    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    ray.init(address="local", include_dashboard=False, num_cpus=args.cpus, log_to_driver=False, logging_level="ERROR")
    start_s = time.perf_counter() - t
    address = ray.get_runtime_context().gcs_address
    try:
        map_tasks(_noop, list(range(2 * args.cpus)), address)  # the workers start here, untimed
        items = list(range(args.tasks))
        t = time.perf_counter()
        assert [o.value for o in map_tasks(_noop, items, address)] == items
        ray_task_s = (time.perf_counter() - t) / args.tasks
        t = time.perf_counter()
        map_tasks(_noop, items)
        local_task_s = (time.perf_counter() - t) / args.tasks

        runs = [synthetic_run(int(s), args.minutes) for s in args.seeds.split(",")]
        here_s, there_s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            here = tune(args.policy, runs)
            here_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            there = tune(args.policy, runs, ray_address=address)
            there_s.append(time.perf_counter() - t)
            assert here == there, "the Ray result differs from the in-process one"
    finally:
        ray.shutdown()
    points = 1
    for values in GRIDS[args.policy].values():
        points *= len(values)
    result = {
        "ray_version": ray.__version__,
        "machine_cpus": os.cpu_count(),
        "ray_cpus": args.cpus,
        "ray_start_s": round(start_s, 2),
        "per_task_overhead_ms_ray": round(1000 * ray_task_s, 3),
        "per_task_overhead_ms_in_process": round(1000 * local_task_s, 4),
        "empty_tasks": args.tasks,
        "tune_policy": args.policy,
        "tune_grid_points": points,
        "tune_runs": len(runs),
        "tune_minutes_per_run": args.minutes,
        "tune_in_process_s_p50": round(statistics.median(here_s), 2),
        "tune_ray_s_p50": round(statistics.median(there_s), 2),
        "tune_speedup_p50": round(statistics.median(here_s) / statistics.median(there_s), 2),
        "tune_identical": True,
        "load_average_1m_before": round(load_before, 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }
    print(
        f"Ray {result['ray_version']} on {args.cpus} CPUs: start {start_s:.1f} s, "
        f"{1000 * ray_task_s:.2f} ms per empty task ({1000 * local_task_s:.3f} ms in process); "
        f"tune {args.policy} ({points} points x {len(runs)} runs x {args.minutes} min): "
        f"{statistics.median(here_s):.1f} s in process, {statistics.median(there_s):.1f} s on Ray = "
        f"{result['tune_speedup_p50']:.2f}x (medians; load average {load_before:.1f} -> "
        f"{result['load_average_1m_after']:.1f})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
