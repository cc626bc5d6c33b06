"""Backtest speed, side by side (a print, not a test): the policies of a `train` report replayed one at a time
(one observation builder and fleet core each, as before 3b81764) against all of them together
(`training.backtest.simulate_many`: one builder for the loads, one fleet core of P x N fleets), at equal work:
the same loads, the same policies, the same minutes. Both must give the same trajectories (checked every repeat).

The default case is the report's check case: synthetic seeds 3000 and 3001, 2,000 minutes, the shipped `default`
and the report's rule baselines. Each figure is the median of `--repeats` (the machine may be shared). Run:

    .venv/bin/python benchmarks/backtest_bench.py [--seeds 3000,3001] [--minutes 2000] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from fleetpilot.policies.registry import TRAIN_BASELINES, make_policy
    from fleetpilot.sim.params import FleetParams
    from fleetpilot.training.backtest import simulate, simulate_many, synthetic_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="3000,3001", help="synthetic seeds, comma-separated (one batch)")
    ap.add_argument("--minutes", type=int, default=2000, help="minutes per seed")
    ap.add_argument("--policies", default=",".join(["default", *TRAIN_BASELINES]), help="comma-separated names")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of each way (median reported)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as one flat JSON object")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"--seeds: {args.seeds!r} is not a comma-separated list of integers", file=sys.stderr)
        return 2
    if args.minutes < 1 or args.repeats < 1:
        print("--minutes and --repeats must be at least 1", file=sys.stderr)
        return 2
    names = [n for n in args.policies.split(",") if n]
    p = FleetParams()
    runs = [synthetic_run(s, args.minutes) for s in seeds]
    loads = np.stack([r.load_tpm for r in runs])
    keys = np.array([r.noise_key for r in runs], dtype=np.uint64)
    starts = np.array([r.start_minute for r in runs], dtype=np.int64)

    alone_s: list[float] = []
    together_s: list[float] = []
    identical = True
    for _ in range(args.repeats):
        t = time.perf_counter()
        alone = [simulate(make_policy(n), loads, starts, keys, p) for n in names]
        alone_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        together = simulate_many([make_policy(n) for n in names], loads, starts, keys, p)
        together_s.append(time.perf_counter() - t)
        identical &= all(
            np.array_equal(getattr(a, f), getattr(b, f))
            for a, b in zip(alone, together, strict=True)
            for f in ("active", "delta", "capacity", "down", "desired")
        )
    a50, t50 = statistics.median(alone_s), statistics.median(together_s)
    print(f"{len(names)} policies x {len(seeds)} loads x {args.minutes} minutes, median of {args.repeats}")
    print(f"  one at a time  {a50:8.2f} s   ({min(alone_s):.2f}..{max(alone_s):.2f})")
    print(f"  together       {t50:8.2f} s   ({min(together_s):.2f}..{max(together_s):.2f})")
    print(f"  speed-up       {a50 / t50:8.2f} x   identical trajectories: {identical}")
    if args.json:
        figures = {
            "policies": len(names),
            "loads": len(seeds),
            "minutes": args.minutes,
            "alone_seconds_p50": round(a50, 3),
            "together_seconds_p50": round(t50, 3),
            "speedup_p50": round(a50 / t50, 3),
            "identical": identical,
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
