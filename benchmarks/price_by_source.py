"""A diagnostic, not a policy: does a price of risk learned on some loads carry over to a load it never saw?

Rollout policy iteration (`training/policy_iteration.py`) measures, for every training period, how much each
action of its family would earn over the hour against the current policy. This script runs that measurement
once under the starting rule (the first round of `fleetpilot train --loads broad --config CONFIG --seed S`, on
the same loads and capacity noise) and, for each source of the mixture (each development trace's training
part, and the randomized generator), prints the mean advantage of each action over that source's periods, in
shares of a period's revenue at full service (the fit's own units; the rule's is 0).

The advantages are scored as training scores them (the recipe's downtime penalty: `PPOConfig`'s $300 a minute
unless the recipe sets one), on `--loads` loads per seed (the recipe's round draws `pi_loads`; with more, its
own loads are the first of them, with the same capacity noise).

Then the simplest transfer a learned policy could make: leave one source out, pick the single action with the
highest mean advantage over the other sources (each source weighted equally; `_by_periods` figures weight each
by its periods, as training's fit does, where the generator holds about half), and read what that action does
on the source left out. A positive figure means the other sources' price would have helped it; negative, that
leaving the rule for it makes the left-out load worse. The leave-one-trace-out evaluation asks exactly this of
a state-dependent policy (README: the NAB tweet folds).

Last, whether the observation could tell the hours apart: per source, the correlation of each observation
feature with the log price of the hour's best newsvendor action (hours where every price earned the same are
left out). Bad input (a missing recipe or trace directory, a recipe that is not rollout-pi or starts from
`auto`, bad seeds, an episode too short to keep a period) is one line on stderr and exit code 2.

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
    from fleetpilot.policies.errors import CliError
    from fleetpilot.training.cli import _broad_data, _train_config, add_training_commands, parse_split
    from fleetpilot.training.policy_iteration import periods_kept, segment_rollouts
    from fleetpilot.training.ppo import action_index, pi_round_loads, training_fleet

    parser = argparse.ArgumentParser()
    add_training_commands(parser.add_subparsers())
    argv = ["train", "--loads", "broad", "--config", str(args.config), "--out", "unused", "--seed", str(seed)]
    if args.broad_traces:
        argv += ["--broad-traces", args.broad_traces]
    targs = parser.parse_args(argv)
    cfg, fleet = _train_config(targs.config, targs)
    if cfg.method != "rollout-pi" or cfg.init_action == "auto":
        raise CliError(
            f"--config {args.config}: needs a rollout-pi recipe with a fixed starting rule (init_action risk=R or "
            f"U,C), got method {cfg.method}, init_action {cfg.init_action}"
        )
    cfg = replace(cfg, pi_loads=args.loads, episode_minutes=args.episode_minutes or cfg.episode_minutes)
    data = _broad_data(targs, cfg, fleet, parse_split(targs.split))
    cfg = data.cfg
    if not periods_kept(cfg.episode_minutes, cfg.pi_skip_minutes, cfg.pi_period_minutes):
        raise CliError(
            f"--episode-minutes {cfg.episode_minutes}: no period of {cfg.pi_period_minutes} minutes is kept after "
            f"the recipe's pi_skip_minutes {cfg.pi_skip_minutes}"
        )
    mapping = ActionMapping.from_json(cfg.mapping)
    start = action_index(mapping, cfg.init_action)
    train_fleet = training_fleet(cfg, fleet)
    loads, starts, keys, sources = pi_round_loads(cfg, train_fleet, data.sampler, 1)  # training's first round
    seg = segment_rollouts(
        lambda x: np.full(len(x), start), mapping, loads, starts, keys, train_fleet,
        cfg.pi_hold_minutes, cfg.pi_period_minutes, cfg.pi_skip_minutes, np.array(sources),
    )  # fmt: skip
    src = np.asarray(seg.source)
    # which price each hour wanted: log of the risk of its best newsvendor action; an hour where every price
    # earned the same (e.g. a fleet held at its bounds) wanted none and is left out of the correlations
    nv = seg.advantage[:, mapping.n_grid :]
    risks = np.log(np.asarray(mapping.newsvendor_risk))
    wanted = risks[np.argmax(nv, axis=1)] if risks.size else np.zeros(len(src))
    decided = np.ptp(nv, axis=1) > 1e-9 if risks.size else np.zeros(len(src), dtype=bool)
    return {
        "seed": seed,
        "actions": [mapping.describe(k) for k in range(mapping.n)],
        "start": start,
        "sources": {
            str(s): {
                "periods": int((src == s).sum()),
                "advantage": [round(float(v), 4) for v in seg.advantage[src == s].mean(axis=0)],
                "hours_with_a_wanted_price": int((decided & (src == s)).sum()),
                "wanted_price_correlation": correlations(
                    seg.features[decided & (src == s)], wanted[decided & (src == s)]
                ),
            }
            for s in sorted(set(src.tolist()))
        },
    }


def correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson correlation of each observation feature with `y` over the rows (0 where either is constant)."""
    from fleetpilot.policies.observation import FEATURE_NAMES

    out = {}
    for j, name in enumerate(FEATURE_NAMES[: x.shape[1]]):
        a, b = x[:, j].astype(np.float64), y.astype(np.float64)
        ok = a.std() > 1e-12 and b.std() > 1e-12 and len(a) > 2
        out[name] = round(float(np.corrcoef(a, b)[0, 1]), 3) if ok else 0.0
    return out


def transfer(m: dict, by_periods: bool = False) -> dict:
    """Per source: its own best action, and the action the other sources pick with its effect there. The other
    sources' mean advantages are weighted equally, or (`by_periods`) by their periods, as training's fit does."""
    names = list(m["sources"])
    adv = np.array([m["sources"][n]["advantage"] for n in names])
    periods = np.array([m["sources"][n]["periods"] for n in names], dtype=np.float64)
    out = {}
    for i, n in enumerate(names):
        if len(names) < 2:
            break
        w = np.delete(periods if by_periods else np.ones(len(names)), i)
        others = (np.delete(adv, i, axis=0) * w[:, None]).sum(axis=0) / w.sum()
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
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        print(f"error: --seeds {args.seeds}: expected distinct non-negative integers, e.g. 1,2", file=sys.stderr)
        return 2
    if args.loads < 1 or args.jobs < 1 or args.episode_minutes < 0:
        print("error: --loads and --jobs must be >= 1, --episode-minutes >= 0", file=sys.stderr)
        return 2
    from fleetpilot.policies.errors import UserError

    t0 = time.perf_counter()
    try:
        if args.jobs > 1 and len(seeds) > 1:
            with ProcessPoolExecutor(min(args.jobs, len(seeds))) as pool:
                runs = list(pool.map(measure, seeds, [args] * len(seeds)))
        else:
            runs = [measure(s, args) for s in seeds]
    except UserError as exc:  # a bad recipe, trace directory or episode length: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0

    flat: dict[str, float | int | str] = {"seeds": args.seeds, "loads": args.loads, "seconds": round(seconds, 1)}
    worse = helped = worse_p = helped_p = 0
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
        print(
            "\nthe observation feature most correlated with the log price each hour wanted (its best newsvendor action)"
        )
        for n in names:
            corr = m["sources"][n]["wanted_price_correlation"]
            f = max(corr, key=lambda k: abs(corr[k]))
            row = m["sources"][n]
            print(f"{n}: {f} {corr[f]:+.3f} (over {row['hours_with_a_wanted_price']} of its {row['periods']} hours)")
            flat[f"s{m['seed']}_{n}_wanted_price_max_abs_correlation"] = abs(corr[f])
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
        m["transfer_by_periods"] = transfer(m, by_periods=True)
        for t in m["transfer_by_periods"].values():
            worse_p += t["others_pick_advantage"] < 0
            helped_p += t["others_pick_advantage"] > 0
    total = sum(len(m.get("transfer", {})) for m in runs)
    print(f"\nthe other sources' pick made the left-out source worse in {worse} of {total}, better in {helped}")
    print(f"(the other sources weighted by their periods: worse in {worse_p}, better in {helped_p})")
    flat.update({"left_out_cases": total, "left_out_worse": worse, "left_out_better": helped})
    flat.update({"left_out_worse_by_periods": worse_p, "left_out_better_by_periods": helped_p})
    if args.json:
        Path(args.json).write_text(json.dumps(flat, indent=1) + "\n")
    if args.details:
        Path(args.details).write_text(json.dumps({"runs": runs, "seconds": round(seconds, 1)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
