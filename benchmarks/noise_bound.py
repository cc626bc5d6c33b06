"""How much of the hindsight oracle any policy can reach on the seed's synthetic load: a bound, not a policy.

The oracle (`training/oracle.py`) knows every minute's load, including its per-minute noise. The seed's
generator draws that noise independently each minute (a Normal(1, s) factor on the cyclic load,
`sim.load.synthetic_parts`), so no policy can know it in advance: past minutes say nothing about the next
one's draw. This script gives a program everything else — the daily curve, the low-frequency factor, every spike
with its timing, the noise level s — and lets it choose the fleet of every minute in advance, maximizing the
expected reward over the noise (a Gauss-Hermite quadrature of `--nodes` points over the factor, then the
generator's rounding) with the oracle's own dynamic program. Scored on the drawn load as the harness scores
(expected reward over the capacity noise), its share of the oracle's profit estimates the most a policy that does
not see the future noise can earn: a real policy knows less (neither the curve ahead nor the spikes) and is held
to one net action a minute, which the program, like the oracle, is not. It is an estimate, not a proof: scored on
one drawn load, a policy could by luck beat the plan there, and the quadrature prices the noise at `--nodes`
points (the plan's own value in expectation over the noise is printed next to it).

    .venv/bin/python benchmarks/noise_bound.py --seeds 3000..3019 --json bound.json

Bad input (bad seeds or sizes) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from numpy.polynomial.hermite_e import hermegauss

from fleetpilot.sim.fleet import expected_reward
from fleetpilot.sim.load import synthetic_parts
from fleetpilot.sim.params import FleetParams
from fleetpilot.training.backtest import synthetic_streams
from fleetpilot.training.cli import parse_seeds
from fleetpilot.training.oracle import oracle_fleet


def bound_of_seed(seed: int, minutes: int, nodes: int, p: FleetParams) -> dict:
    """The oracle's and the noise-blind program's expected profit on `synthetic_run(seed, minutes)`'s load."""
    parts = synthetic_parts(synthetic_streams(seed)[0], minutes + 1)  # synthetic_run's load, parts kept apart
    served = slice(1, None)  # the harness observes minute 0 and scores the minutes after it
    drawn = parts.load()[served]
    x, w = hermegauss(nodes)
    w = w / w.sum()
    at_nodes = [parts.load(1.0 + parts.noise_share * xk)[served] for xk in x]

    def blind_reward(sizes: np.ndarray) -> np.ndarray:
        r = np.zeros((drawn.size, 1, sizes.size))
        for wk, load in zip(w, at_nodes, strict=True):
            r[:, 0, :] += wk * expected_reward(sizes[None, :], load[:, None], p)
        return r

    reach = np.maximum(drawn, np.max(at_nodes, axis=0))  # the sizes considered cover the noise's upper nodes
    blind = oracle_fleet(reach[None, :], p, reward=blind_reward)[0]
    oracle = oracle_fleet(drawn[None, :], p)[0]
    oracle_usd = float(expected_reward(oracle.astype(float), drawn, p).sum())
    blind_usd = float(expected_reward(blind.astype(float), drawn, p).sum())
    # the plan's value in expectation over the noise (the quadrature), not on the one drawn load
    planned_usd = float(
        sum(wk * expected_reward(blind.astype(float), load, p).sum() for wk, load in zip(w, at_nodes, strict=True))
    )
    if oracle_usd <= 0:
        raise ValueError(f"seed {seed}: the oracle earns ${oracle_usd:,.2f} in {minutes} minutes: no share to take")
    return {
        "seed": seed,
        "noise_share": parts.noise_share,
        "oracle_usd": oracle_usd,
        "noise_blind_usd": blind_usd,
        "noise_blind_planned_usd": planned_usd,
        "noise_blind_pct": 100.0 * blind_usd / oracle_usd,
        "oracle_machine_minutes": int(oracle.sum()),
        "noise_blind_machine_minutes": int(blind.sum()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--seeds", default="3000..3019", help="synthetic seeds: A..B, A,B,C or A (as `fleetpilot backtest`)"
    )
    ap.add_argument("--minutes", type=int, default=10_000, help="scored minutes per seed (10000)")
    ap.add_argument("--nodes", type=int, default=15, help="quadrature points over the noise factor (15)")
    ap.add_argument("--json", metavar="PATH", help="write the figures as one flat JSON object")
    args = ap.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        if not 10 <= args.minutes <= 100_000:
            raise ValueError(f"--minutes: {args.minutes}: need 10..100000")
        if not 3 <= args.nodes <= 41:
            raise ValueError(f"--nodes: {args.nodes}: need 3..41")
    except ValueError as exc:
        print(f"noise_bound: error: {exc}", file=sys.stderr)
        return 2
    p = FleetParams()
    t0 = time.perf_counter()
    try:
        rows = [bound_of_seed(s, args.minutes, args.nodes, p) for s in seeds]
    except ValueError as exc:
        print(f"noise_bound: error: {exc}", file=sys.stderr)
        return 2
    oracle = sum(r["oracle_usd"] for r in rows)
    blind = sum(r["noise_blind_usd"] for r in rows)
    for r in rows:
        print(
            f"seed {r['seed']}: noise {100 * r['noise_share']:.1f}%  oracle ${r['oracle_usd']:,.0f}  "
            f"noise-blind ${r['noise_blind_usd']:,.0f} ({r['noise_blind_pct']:.2f}%)  machine-minutes "
            f"{r['noise_blind_machine_minutes']:,} vs {r['oracle_machine_minutes']:,}"
        )
    pct = [r["noise_blind_pct"] for r in rows]
    figures = {
        "seeds": args.seeds,
        "minutes": args.minutes,
        "nodes": args.nodes,
        "oracle_usd": round(oracle, 2),
        "noise_blind_usd": round(blind, 2),
        "noise_blind_pct_oracle": round(100.0 * blind / oracle, 3),
        "noise_blind_planned_pct_oracle": round(100.0 * sum(r["noise_blind_planned_usd"] for r in rows) / oracle, 3),
        "noise_blind_pct_min": round(min(pct), 3),
        "noise_blind_pct_max": round(max(pct), 3),
        "machine_minutes_over_oracle_pct": round(
            100.0 * sum(r["noise_blind_machine_minutes"] for r in rows) / sum(r["oracle_machine_minutes"] for r in rows)
            - 100.0,
            3,
        ),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(
        f"{len(rows)} seeds: the noise-blind program earns {figures['noise_blind_pct_oracle']:.2f}% of the oracle "
        f"({figures['noise_blind_pct_min']:.2f}..{figures['noise_blind_pct_max']:.2f}% per seed) on the drawn loads; "
        f"{figures['noise_blind_planned_pct_oracle']:.2f}% in expectation over the noise (the plan's own value)"
    )
    if args.json:
        try:
            with open(args.json, "w") as fh:
                json.dump(figures, fh, indent=1)
        except OSError as exc:
            print(f"noise_bound: error: --json {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
