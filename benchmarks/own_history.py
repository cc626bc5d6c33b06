"""Your own history: train on the first two thirds of a real trace, judged on the last third (issue 12's bar).

`fleetpilot train --trace TRACE --split 0.5,0.17,0.33` (the training recipe of --config, in --budget-minutes of
wall time): episodes from the first half, keep-best on the next 17%, so the policy sees the first two thirds
only. It is then scored on the last third (the train's own test run, the same minutes and noise), next to
target tracking tuned in hindsight on that last third itself (the grid of `benchmarks/generalization.py`, with
utilization down to 0.3: the best rule an operator could have set had they known the load), the `newsvendor`
rule and the oracle. Figures: expected profit ($, and % of the oracle's where the oracle earns money: a share of a
loss would flip the order), downtime minutes; the train command's wall time (`train_seconds`, the report
included) and the training's own, which `--budget-minutes` bounds (`training_seconds`).

    .venv/bin/python benchmarks/own_history.py --config docs/experiments/rollout-pi-broad.yaml \
        --trace ../shared/data/traces/worldcup98_pre_tournament_minute.csv --budget-minutes 8 --json own.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPLIT = "0.5,0.17,0.33"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True, help="the history CSV (timestamp,requests)")
    ap.add_argument("--config", help="training settings YAML (`fleetpilot train --config`)")
    ap.add_argument("--budget-minutes", type=float, default=8.0, help="training wall-time budget (8)")
    ap.add_argument("--peak-tpm", type=float, default=10_000.0, help="rescale the trace to this peak (10000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--steps", type=int, default=None, help="fleet-minutes of PPO training (smoke runs; refused with rollout-pi)"
    )
    ap.add_argument("--small-grid", action="store_true", help="two target-tracking values per parameter (smoke)")
    ap.add_argument("--out", help="the model directory (default: a temporary one)")
    ap.add_argument("--json", metavar="PATH", help="write the figures as one flat JSON object")
    args = ap.parse_args(argv)
    if not Path(args.trace).is_file():
        ap.error(f"--trace {args.trace}: no such file")

    from fleetpilot.sim.load import read_trace
    from fleetpilot.training.backtest import backtest
    from fleetpilot.training.cli import parse_split, split_history
    from fleetpilot.training.tune import grid_scores

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from generalization import rule_grids

    out = Path(args.out or tempfile.mkdtemp(prefix="own-history-")) / "model"
    cmd = [sys.executable, "-m", "fleetpilot.controller.cli", "train", "--trace", args.trace, "--split", SPLIT]
    cmd += ["--peak-tpm", f"{args.peak_tpm:g}", "--seed", str(args.seed), "--no-resume", "--out", str(out)]
    cmd += ["--budget-minutes", f"{args.budget_minutes:g}", "--name", "learned"]
    if args.config:
        cmd += ["--config", args.config]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    train_s = time.perf_counter() - t0
    if r.returncode != 0:  # the train command's own error (2: bad input, named in its one line)
        print(r.stderr[-3000:], file=sys.stderr)
        return r.returncode
    load = read_trace(args.trace).rescaled(args.peak_tpm)
    _, _, test_run, _ = split_history(load, parse_split(SPLIT), args.trace, SPLIT)

    from fleetpilot.policies.registry import make_policy

    pols = {"learned": make_policy(str(out)), "newsvendor": make_policy("newsvendor"), "oracle": None}
    rows = {s["policy"]: s for s in backtest([test_run], pols).summary}
    oracle = rows["oracle"]["expected_profit_usd"]
    grid = rule_grids(args.small_grid)["target-tracking"]
    tt = max(grid_scores("target-tracking", [test_run], grid), key=lambda pr: pr[1][0]["expected_profit_usd"])
    manifest = json.loads((out / "manifest.json").read_text())

    def pct(x: float) -> float | None:  # a share of a loss would flip the order: none when the oracle loses
        return round(100 * x / oracle, 2) if oracle > 0 else None

    scored = {"learned": rows["learned"], "newsvendor": rows["newsvendor"], "tt_hindsight": tt[1][0]}
    usd = {k: row["expected_profit_usd"] for k, row in scored.items()}
    fig: dict = {
        "trace": Path(args.trace).stem,
        "test_minutes": test_run.minutes,
        "train_seconds": round(train_s, 1),
        "training_seconds": manifest["training"]["seconds"],
        "selected_update": manifest["training"]["selected_update"],
    }
    for k in usd:
        fig[f"{k}_pct_of_oracle"] = pct(usd[k])
        fig[f"{k}_expected_profit_usd"] = round(usd[k], 2)
        fig[f"{k}_downtime_minutes"] = scored[k]["downtime_minutes"]
    fig["tt_hindsight_target_utilization"] = tt[0]["target_utilization"]
    fig["oracle_expected_profit_usd"] = oracle
    fig["learned_beats_tt_hindsight"] = usd["learned"] > usd["tt_hindsight"]
    fig["learned_beats_newsvendor"] = usd["learned"] > usd["newsvendor"]
    for k, v in fig.items():
        print(f"{k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
