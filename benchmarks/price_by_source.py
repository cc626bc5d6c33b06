"""A diagnostic, not a policy: does a price of risk learned on some loads carry over to a load it never saw?

Rollout policy iteration (`training/policy_iteration.py`) measures, for every training period, how much each
action of its family would earn over the hour against the current policy. This script runs that measurement
once under the starting rule (the first round of `fleetpilot train --loads broad --config CONFIG --seed S`, on
the same loads and capacity noise) and, for each source of the mixture (each development trace's training
part, and the randomized generator), prints the mean advantage of each action over that source's periods, in
shares of a period's revenue at full service (the fit's own units; the rule's is 0).

Then the simplest transfer a learned policy could make: leave one source out, pick the single action with the
highest mean advantage over the other sources (each source weighted equally), and read what that action does
on the source left out. A positive figure means the other sources' price would have helped it; negative, that
leaving the rule for it makes the left-out load worse. The leave-one-trace-out evaluation asks exactly this of
a state-dependent policy (README: the NAB tweet folds).

    .venv/bin/python benchmarks/price_by_source.py --seeds 1,2 --loads 128 --jobs 2 --json price.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "docs" / "experiments" / "rollout-pi-sources.yaml"


def measure(seed: int, args: argparse.Namespace) -> dict:
    """Round 1 of the config's rollout policy iteration under its starting rule: per source, each action's mean
    advantage (and the periods it is averaged over)."""
    from fleetpilot.policies.actions import ActionMapping
    from fleetpilot.training.cli import _broad_data, _train_config, add_training_commands, parse_split
    from fleetpilot.training.policy_iteration import segment_rollouts
    from fleetpilot.training.ppo import _draw_loads, action_index, training_fleet

    parser = argparse.ArgumentParser()
    add_training_commands(parser.add_subparsers())
    argv = ["train", "--loads", "broad", "--config", str(args.config), "--out", "unused", "--seed", str(seed)]
    if args.broad_traces:
        argv += ["--broad-traces", args.broad_traces]
    targs = parser.parse_args(argv)
    cfg, fleet = _train_config(targs.config, targs)
    cfg = replace(cfg, pi_loads=args.loads, episode_minutes=args.episode_minutes or cfg.episode_minutes)
    data = _broad_data(targs, cfg, fleet, parse_split(targs.split))
    cfg = data.cfg
    mapping = ActionMapping.from_json(cfg.mapping)
    start = action_index(mapping, cfg.init_action)
    train_fleet = training_fleet(cfg, fleet)
    # the draws of `training.ppo._pi_loop`'s first round
    sources: list[str] = []
    loads, starts = _draw_loads(
        train_fleet, data.sampler, cfg.seed * 1009 + 1, cfg.pi_loads, cfg.episode_minutes, sources
    )
    keys = np.random.default_rng([cfg.seed, 1, 31337]).integers(0, 2**63, cfg.pi_loads, dtype=np.uint64)
    seg = segment_rollouts(
        lambda obs: np.full(obs.n, start), mapping, loads, starts, keys, train_fleet,
        cfg.pi_hold_minutes, cfg.pi_period_minutes, cfg.pi_skip_minutes, np.array(sources),
    )  # fmt: skip
    src = np.asarray(seg.source)
    return {
        "seed": seed,
        "actions": [mapping.describe(k) for k in range(mapping.n)],
        "start": start,
        "sources": {
            str(s): {
                "periods": int((src == s).sum()),
                "advantage": [round(float(v), 4) for v in seg.advantage[src == s].mean(axis=0)],
            }
            for s in sorted(set(src.tolist()))
        },
    }


def transfer(m: dict) -> dict:
    """Per source: its own best action, and the action the other sources pick (equal weights) with its effect."""
    names = list(m["sources"])
    adv = np.array([m["sources"][n]["advantage"] for n in names])
    out = {}
    for i, n in enumerate(names):
        if len(names) < 2:
            break
        others = np.delete(adv, i, axis=0).mean(axis=0)
        k = int(np.argmax(others))
        own = int(np.argmax(adv[i]))
        out[n] = {"own_best": own, "own_best_advantage": float(adv[i, own]), "others_pick": k,
                  "others_pick_advantage": float(adv[i, k])}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the rollout-pi recipe (its family and start)")
    p.add_argument("--seeds", default="1,2", help="training seeds: each draws its own loads (default 1,2)")
    p.add_argument("--loads", type=int, default=128, help="training loads per seed (default 128)")
    p.add_argument("--episode-minutes", type=int, default=0, help="override the recipe's episode length")
    p.add_argument("--broad-traces", default=None, help="trace CSVs of the mixture (default: the development traces)")
    p.add_argument("--jobs", type=int, default=1, help="seeds measured in parallel processes")
    p.add_argument("--json", default=None, help="write the figures here as one flat JSON object")
    p.add_argument("--details", default=None, help="write every advantage here (JSON)")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds {args.seeds}: expected comma-separated integers", file=sys.stderr)
        return 2
    if not seeds or args.loads < 1 or args.jobs < 1:
        print("error: need at least one seed, --loads >= 1 and --jobs >= 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.jobs > 1 and len(seeds) > 1:
        with ProcessPoolExecutor(min(args.jobs, len(seeds))) as pool:
            runs = list(pool.map(measure, seeds, [args] * len(seeds)))
    else:
        runs = [measure(s, args) for s in seeds]
    seconds = time.perf_counter() - t0

    flat: dict[str, float | int | str] = {"seeds": args.seeds, "loads": args.loads, "seconds": round(seconds, 1)}
    worse = helped = 0
    for m in runs:
        acts, names = m["actions"], list(m["sources"])
        short = [a.replace("newsvendor ", "") for a in acts]
        print(
            f"\nseed {m['seed']}: mean advantage over the starting rule ({acts[m['start']]}), shares of a period's revenue"
        )
        print(f"| source (periods) | {' | '.join(short)} |")
        print("|---|" + "---:|" * len(acts))
        for n in names:
            row = m["sources"][n]
            print(f"| {n} ({row['periods']}) | " + " | ".join(f"{v:+.3f}" for v in row["advantage"]) + " |")
        m["transfer"] = tr = transfer(m)
        if tr:
            print("\nleft out | its own best | the other sources' pick: its effect on the left-out source")
        for n, t in tr.items():
            print(f"{n}: {short[t['own_best']]} ({t['own_best_advantage']:+.3f}) | "
                  f"{short[t['others_pick']]}: {t['others_pick_advantage']:+.3f}")  # fmt: skip
            key = f"s{m['seed']}_{n}"
            flat[f"{key}_own_best_advantage"] = round(t["own_best_advantage"], 4)
            flat[f"{key}_others_pick_advantage"] = round(t["others_pick_advantage"], 4)
            flat[f"{key}_others_pick"] = short[t["others_pick"]]
            worse += t["others_pick_advantage"] < 0
            helped += t["others_pick_advantage"] > 0
    total = sum(len(m.get("transfer", {})) for m in runs)
    print(f"\nthe other sources' pick made the left-out source worse in {worse} of {total}, better in {helped}")
    flat.update({"left_out_cases": total, "left_out_worse": worse, "left_out_better": helped})
    if args.json:
        Path(args.json).write_text(json.dumps(flat, indent=1) + "\n")
    if args.details:
        Path(args.details).write_text(json.dumps({"runs": runs, "seconds": round(seconds, 1)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
