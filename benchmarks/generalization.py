"""Leave-one-trace-out evaluation on the long development traces (issue 12, item 6).

For each held-out trace: the learned policy's pipeline (`fleetpilot train`) trains on the OTHER traces, and is
scored on the held-out trace's 10,000-minute windows, each rescaled so its scored minutes peak at 10,000 tpm,
next to
  (a) target tracking and the `forecast` rule, each tuned (`training.tune` grids) on the training loads: the
      first --tune-windows windows of every other trace;
  (b) target tracking tuned in hindsight on each evaluation window itself;
  (c) the best fixed action of the policy's family (every action of its action mapping: each (utilization,
      cushion) of the grid and each newsvendor risk, as a fixed rule with no jump window), chosen in hindsight
      on each evaluation window;
  (d) the hindsight oracle,
and the `newsvendor` rule with its default parameters (the seed's prices; nothing tuned on any load) on the
rise scale of the model's newsvendor actions (`hour` for a model without any).
Figures: % of the oracle's expected profit (expected profits summed over the trace's windows) and downtime
minutes, per trace; the JSON has every window, every choice and its parameters.

Training: each fold runs `fleetpilot train --loads broad --exclude-trace HELD_OUT`: the broad mixture (the
randomized generator plus windows of every development trace but the held-out one, which is never read;
`training/mixture.py`, weights from --mixture) and the train's default recipe otherwise; the other traces'
validation and test parts are rescaled to --peak-tpm. `--policy-dir DIR` skips training and scores DIR (e.g.
the shipped `policies/models/default`) on every fold.

    .venv/bin/python benchmarks/generalization.py --policy-dir policies/models/default --json gen.json --details gen-details.json
    .venv/bin/python benchmarks/generalization.py --budget-minutes 8 --json gen.json     # trains six folds

Each window starts after --lead-minutes (default a day) of the trace's history, which the policies read but
which is not scored; windows follow each other without overlap.

`--no-rule-grids` leaves out (a) and (b), whose grids do not depend on the recipe (about a third of a full run
on 2 cores): to compare training recipes on the learned policy, the newsvendor rule and (c).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fleetpilot.training.cli import add_ray_option

REPO = Path(__file__).resolve().parents[1]
TRACE_DIR = REPO.parent / "shared" / "data" / "traces"
TRACES = {
    "nasa": "nasa_http_jul95_minute.csv",
    "worldcup": "worldcup98_pre_tournament_minute.csv",
    "azure-functions": "azure_functions2019_fn40d07b_minute.csv",
    "nab-aapl": "nab_tweets_aapl_minute.csv",
    "nab-amzn": "nab_tweets_amzn_minute.csv",
    "nab-ko": "nab_tweets_ko_minute.csv",
}
COLUMNS = ("learned", "newsvendor", "tt_tuned", "forecast_tuned", "tt_hindsight", "fixed_hindsight", "oracle")
#: the columns of the target-tracking and forecast grids, which --no-rule-grids skips
RULE_GRID_COLUMNS = ("tt_tuned", "forecast_tuned", "tt_hindsight")
LABELS = {
    "learned": "learned",
    "newsvendor": "newsvendor rule",
    "tt_tuned": "(a) TT tuned",
    "forecast_tuned": "(a) forecast tuned",
    "tt_hindsight": "(b) TT hindsight",
    "fixed_hindsight": "(c) best fixed action",
    "oracle": "(d) oracle",
}


def windows(name: str, path: Path, args) -> list:
    """The evaluation windows of one trace (Runs), each rescaled so its scored minutes peak at args.peak_tpm."""
    from fleetpilot.sim.load import Load, read_trace
    from fleetpilot.training.backtest import trace_run

    load = read_trace(path)
    runs, w, lead = [], args.window_minutes, args.lead_minutes
    first = lead
    while first + w + 1 <= load.minutes and (args.windows is None or len(runs) < args.windows):
        peak = float(load.load_tpm[first + 1 : first + w + 1].max())
        if peak > 0:
            scaled = Load(name, load.load_tpm * (args.peak_tpm / peak), load.start)
            runs.append(trace_run(scaled, first, w, lead))
        first += w
    return runs


def _rows(report) -> list[dict]:
    return [r["results"][0] for r in report.runs]


def score_policy(policy, runs: list) -> list[dict]:
    from fleetpilot.training.backtest import backtest

    return _rows(backtest(runs, {"p": policy}))


def best_fixed_action(mapping, runs: list, chunk: int = 12) -> list[dict]:
    """Per run, the action of `mapping` that earns most (expected profit) as a fixed rule on that run, scored."""
    from fleetpilot.policies.cushion import RuleActions
    from fleetpilot.sim.fleet import expected_reward
    from fleetpilot.sim.params import FleetParams
    from fleetpilot.training.backtest import score, simulate

    p = FleetParams()
    lead = runs[0].lead
    loads = np.stack([r.load_tpm for r in runs])
    starts = np.array([r.start_minute for r in runs])
    keys = np.array([r.noise_key for r in runs], dtype=np.uint64)
    n = len(runs)
    best_e = np.full(n, -np.inf)
    best: list[dict | None] = [None] * n
    for a0 in range(0, mapping.n, chunk):
        acts = np.arange(a0, min(a0 + chunk, mapping.n))
        rows = np.repeat(acts, n)
        traj = simulate(
            RuleActions(mapping, rows),
            np.tile(loads, (acts.size, 1)),
            np.tile(starts, acts.size),
            np.tile(keys, acts.size),
            p,
        )
        active, delta = traj.active[:, lead:], traj.delta[:, lead:]
        served = np.tile(loads[:, lead + 1 :], (acts.size, 1))
        e = expected_reward(active, served, p).sum(axis=1).reshape(acts.size, n)
        for j in range(n):
            i = int(np.argmax(e[:, j]))
            if e[i, j] > best_e[j]:
                best_e[j] = e[i, j]
                row = i * n + j
                res = score("fixed", active[row], delta[row], loads[j, lead + 1 :], int(keys[j]), lead + 1, p)
                best[j] = dict(res.__dict__, action=mapping.describe(int(acts[i])))
    return [b for b in best if b is not None]


def fold_models(held: list[str], args, out_root: Path) -> dict[str, Path]:
    """Each held-out trace's model: the given one (--policy-dir), or one trained per fold, the folds in this
    process or as Ray tasks (--ray), with a progress bar (or lines with an ETA) over the folds."""
    if args.policy_dir:
        return {fold: Path(args.policy_dir) for fold in held}
    from fleetpilot.training.fanout import map_tasks, values
    from fleetpilot.training.progress import Progress

    done = {f: out_root / f"without-{f}" for f in held if args.reuse and reusable(f, args, out_root)}
    todo = [f for f in held if f not in done]
    with Progress(len(todo), "leave-one-trace-out training", "folds") as bar:
        task = functools.partial(_train_fold_task, list(TRACES), args, out_root)
        dirs = values(map_tasks(task, todo, args.ray, lambda _i, _o: bar.update(1)), "train") if todo else []
    trained = dict(zip(todo, dirs, strict=True))
    return {f: done.get(f) or trained[f] for f in held}


def _train_fold_task(names: list[str], args, out_root: Path, held_out: str) -> Path:
    return train_fold(held_out, names, args, out_root)


FOLD_FILE = "fold.json"  #: in a fold's model directory: the training command and its inputs' digests (--reuse)


def fold_command(held_out: str, args, out_root: Path) -> list[str]:
    """The `fleetpilot train` arguments of one fold (without the interpreter)."""
    out = out_root / f"without-{held_out}"
    cmd = ["train", "--out", str(out), "--seed", str(args.seed)]
    cmd += ["--no-resume", "--peak-tpm", f"{args.peak_tpm:g}", "--loads", "broad", "--test-seeds", "3000..3004"]
    cmd += ["--exclude-trace", Path(TRACES[held_out]).stem]
    if args.train_minutes:  # smoke runs: the first minutes of each trace (the held-out one is excluded as ever)
        cmd += ["--broad-traces", str(out_root / f"without-{held_out}-traces")]
    else:
        cmd += ["--broad-traces", str(TRACE_DIR)]
    if args.mixture:
        cmd += ["--mixture", args.mixture]
    if args.budget_minutes:
        cmd += ["--budget-minutes", f"{args.budget_minutes:g}"]
    if args.train_config:
        cmd += ["--config", args.train_config]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    return cmd


def fold_record(held_out: str, args, out_root: Path) -> dict:
    """What a fold's model was trained with: the command, and the sha256 of its config file and of every
    development trace (a reused fold must have seen the same)."""
    cmd = fold_command(held_out, args, out_root)
    files = sorted(TRACE_DIR.glob("*.csv")) + ([Path(args.train_config)] if args.train_config else [])
    digests = {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    return {"command": cmd, "train_minutes": args.train_minutes, "sha256": digests}


def reusable(held_out: str, args, out_root: Path) -> bool:
    """--reuse: whether the fold's model directory was trained exactly as this run would train it (else it is
    trained again, and stderr says why)."""
    d = out_root / f"without-{held_out}"
    if not (d / "manifest.json").is_file():
        return False
    try:
        same = json.loads((d / FOLD_FILE).read_text()) == fold_record(held_out, args, out_root)
    except (OSError, ValueError):
        same = False
    if not same:
        print(f"--reuse: {d} was trained with other settings or inputs (or has no {FOLD_FILE}): training it again",
              file=sys.stderr)  # fmt: skip
    return same


def train_fold(held_out: str, names: list[str], args, out_root: Path) -> Path:
    """`fleetpilot train --loads broad --exclude-trace HELD_OUT` (the development traces but the held-out one,
    plus the randomized generator); returns the model directory, with `fold.json` recording how it was trained.
    `names` are the folds' short names."""
    from fleetpilot.sim.load import read_trace, write_trace

    out = out_root / f"without-{held_out}"
    cmd = fold_command(held_out, args, out_root)
    if args.train_minutes:  # the short traces the command names
        short = out_root / f"without-{held_out}-traces"
        short.mkdir(parents=True, exist_ok=True)
        for path in sorted(TRACE_DIR.glob("*.csv")):
            load = read_trace(path)
            write_trace(short / path.name, load.window(0, min(args.train_minutes, load.minutes), path.stem))
    record = fold_record(held_out, args, out_root)
    (out / FOLD_FILE).unlink(missing_ok=True)  # a training that fails leaves no record a later --reuse could trust
    r = subprocess.run([sys.executable, "-m", "fleetpilot.controller.cli", *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"training without {held_out} failed:\n{r.stderr[-3000:]}")
    (out / FOLD_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return out


def _trained_on(model_dir: Path) -> dict:
    """A fold model's training mixture as its manifest records it: the weights and the left-out traces."""
    from fleetpilot.policies.onnx_policy import read_manifest

    training = read_manifest(model_dir)["training"]
    loads = training["loads"]
    broad = next((x["broad"] for x in loads if "broad" in x), None)
    learned = {
        "method": training["ppo"].get("method", "ppo"),
        "start_rule": training.get("start_rule"),
        "selected_update": training.get("selected_update"),
        "seconds": training.get("seconds"),
    }
    if broad is None:
        return {"loads": loads, **learned}
    return {"weights": broad["weights"], "excluded": broad["excluded"], "left_out": broad["left_out"], **learned}


def rule_grids(small: bool) -> dict[str, dict]:
    """The tuning grids of `training.tune`, with target tracking's utilization extended down to 0.3 (on bursty
    real loads at this scale the best target lies below the synthetic grid's 0.55, and a hindsight baseline
    whose grid binds would flatter the learned policy); `small`: the first and last value of each (smoke)."""
    from fleetpilot.training.tune import GRIDS

    grids = {p: dict(GRIDS[p]) for p in ("target-tracking", "forecast")}
    tt = grids["target-tracking"]
    tt["target_utilization"] = sorted({0.3, 0.4, 0.5, *tt["target_utilization"]})
    if small:
        grids = {p: {k: [v[0], v[-1]] if len(v) > 1 else v for k, v in g.items()} for p, g in grids.items()}
    return grids


def at_edge(params: dict, grid: dict) -> list[str]:
    """The parameters whose chosen value is the grid's smallest or largest (the grid, not the data, decided)."""
    return [k for k, v in params.items() if len(grid[k]) > 1 and v in (grid[k][0], grid[k][-1])]


def summarize(rows: list[dict], oracle: list[dict]) -> dict:
    e = sum(x["expected_profit_usd"] for x in rows)
    o = sum(x["expected_profit_usd"] for x in oracle)
    return {
        "expected_profit_usd": round(e, 2),
        "pct_of_oracle": round(100 * e / o, 2) if o > 0 else None,
        "downtime_minutes": int(sum(x["downtime_minutes"] for x in rows)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--traces", default=",".join(TRACES), help=f"held-out traces, comma-separated ({', '.join(TRACES)})"
    )
    ap.add_argument("--policy-dir", help="score this model on every fold instead of training one per fold")
    ap.add_argument("--budget-minutes", type=float, default=None, help="wall-time budget of each fold's training")
    ap.add_argument("--train-config", help="PPO settings YAML passed to each fold's `fleetpilot train --config`")
    ap.add_argument("--steps", type=int, default=None, help="fleet-minutes of each fold's training")
    ap.add_argument("--mixture", default=None, help="each fold's `fleetpilot train --mixture` (component weights)")
    ap.add_argument("--train-minutes", type=int, default=None, help="train on the first minutes of each trace only")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--windows", type=int, default=None, help="at most this many evaluation windows per trace")
    ap.add_argument("--window-minutes", type=int, default=10_000, help="scored minutes per window (10000)")
    ap.add_argument("--lead-minutes", type=int, default=1440, help="history before each window (a day)")
    ap.add_argument("--tune-windows", type=int, default=2, help="windows of each training trace the rules tune on")
    ap.add_argument("--peak-tpm", type=float, default=10_000.0, help="each window's peak (10000)")
    ap.add_argument("--small-grids", action="store_true", help="two values of each rule parameter (smoke runs)")
    ap.add_argument(
        "--no-rule-grids",
        action="store_true",
        help="skip the target-tracking and forecast grids, columns (a) and (b), which do not depend on the recipe: "
        "the learned policy, the newsvendor rule, (c) and the oracle only, to compare training recipes",
    )
    ap.add_argument("--out", help="where the folds' models go (default: a temporary directory)")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="score the fold models already in --out instead of retraining, those trained with this run's settings "
        "and inputs (their fold.json: the command, the config's and every trace's sha256); others are trained again",
    )
    ap.add_argument("--json", metavar="PATH", help="write the figures as one flat JSON object (TRACE_COLUMN_FIGURE)")
    ap.add_argument("--details", metavar="PATH", help="write every choice and per-window figure as JSON")
    add_ray_option(ap)  # the folds' trainings and the hindsight grids as Ray tasks
    args = ap.parse_args(argv)

    from fleetpilot.policies.actions import ActionMapping
    from fleetpilot.policies.onnx_policy import OnnxPolicy, read_manifest
    from fleetpilot.policies.registry import make_policy
    from fleetpilot.training.backtest import backtest
    from fleetpilot.training.tune import grid_scores

    held = [t.strip() for t in args.traces.split(",") if t.strip()]
    unknown = [t for t in held if t not in TRACES]
    if unknown:
        ap.error(f"--traces: unknown {', '.join(unknown)} (known: {', '.join(TRACES)})")
    for name in TRACES:
        if not (TRACE_DIR / TRACES[name]).is_file():
            ap.error(f"trace {TRACE_DIR / TRACES[name]} is missing")
    for flag in ("json", "details"):
        path = getattr(args, flag)
        if path and not Path(path).resolve().parent.is_dir():
            ap.error(f"--{flag} {path}: directory does not exist")
    if args.policy_dir and not Path(args.policy_dir).is_dir():
        ap.error(f"--policy-dir {args.policy_dir}: no such directory")
    t0 = time.perf_counter()
    # every trace's windows: the held-out ones are evaluated, the others' first windows are training loads
    wins = {name: windows(name, TRACE_DIR / TRACES[name], args) for name in TRACES}
    for name in held:
        if not wins[name]:
            ap.error(f"{name}: shorter than one window of {args.window_minutes} minutes after {args.lead_minutes}")
    tune_runs = {name: wins[name][: args.tune_windows] for name in TRACES}
    eval_runs = [r for name in held for r in wins[name]]
    owner = [name for name in held for _ in wins[name]]
    tuning = "" if args.no_rule_grids else f"; tuning on up to {args.tune_windows} per training trace"
    print(f"{len(eval_runs)} evaluation windows{tuning}", file=sys.stderr)

    oracle = _rows(backtest(eval_runs, {"oracle": None}))
    # (b): the target-tracking grid on every evaluation window; (a) for target tracking reads the same kind of
    # table on the training traces' windows
    flat_tune = [r for name in TRACES for r in tune_runs[name]]
    tune_owner = [name for name in TRACES for _ in tune_runs[name]]
    grids = rule_grids(args.small_grids)
    if args.no_rule_grids:
        tt_all, fc_tune = [], []
    else:
        tt_all = grid_scores("target-tracking", eval_runs + flat_tune, grids["target-tracking"], args.ray)
        fc_tune = grid_scores("forecast", flat_tune, grids["forecast"], args.ray)
        print(f"grids scored ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    tt_eval = [(params, rows[: len(eval_runs)]) for params, rows in tt_all]
    tt_tune = [(params, rows[len(eval_runs) :]) for params, rows in tt_all]
    columns = [c for c in COLUMNS if not (args.no_rule_grids and c in RULE_GRID_COLUMNS)]

    def tuned_for(table, fold: str) -> dict:
        """The grid point with the most expected profit on the windows of every trace but `fold`."""
        best = max(
            table,
            key=lambda pt: sum(x["expected_profit_usd"] for x, o in zip(pt[1], tune_owner, strict=True) if o != fold),
        )
        return best[0]

    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fleetpilot-gen-"))
    out_root.mkdir(parents=True, exist_ok=True)
    model_dirs = fold_models(held, args, out_root)
    results: dict[str, dict] = {}
    for fold in held:
        idx = [i for i, o in enumerate(owner) if o == fold]
        runs = [eval_runs[i] for i in idx]
        model_dir = model_dirs[fold]
        learned = OnnxPolicy.load(model_dir)
        mapping = ActionMapping.from_json(read_manifest(model_dir)["action_mapping"])
        per: dict[str, list[dict]] = {
            "learned": score_policy(learned, runs),
            "newsvendor": score_policy(make_policy("newsvendor", {"rise_scale": mapping.newsvendor_rise_scale}), runs),
            "fixed_hindsight": best_fixed_action(mapping, runs),
            "oracle": [oracle[i] for i in idx],
        }
        results[fold] = {
            "model": str(model_dir),
            "trained_on": _trained_on(model_dir) if not args.policy_dir else "given (--policy-dir)",
            "windows": [r.name for r in runs],
            "newsvendor_rise_scale": mapping.newsvendor_rise_scale,
        }
        if not args.no_rule_grids:
            tt_params, fc_params = tuned_for(tt_tune, fold), tuned_for(fc_tune, fold)
            tt_point = next(rows for params, rows in tt_eval if params == tt_params)
            per["tt_tuned"] = [tt_point[i] for i in idx]
            per["forecast_tuned"] = score_policy(make_policy("forecast", fc_params), runs)
            per["tt_hindsight"] = []
            for i in idx:
                params, rows = max(tt_eval, key=lambda pt, i=i: pt[1][i]["expected_profit_usd"])
                per["tt_hindsight"].append(
                    dict(rows[i], params=params, at_grid_edge=at_edge(params, grids["target-tracking"]))
                )
            results[fold].update(
                tt_tuned_params=tt_params,
                tt_tuned_at_grid_edge=at_edge(tt_params, grids["target-tracking"]),
                forecast_tuned_params=fc_params,
                forecast_tuned_at_grid_edge=at_edge(fc_params, grids["forecast"]),
            )
        results[fold]["summary"] = {c: summarize(per[c], per["oracle"]) for c in columns}
        results[fold]["per_window"] = {c: per[c] for c in columns}
        print(f"{fold} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    print(format_table(results, columns))
    if args.json:
        Path(args.json).write_text(json.dumps(flat_figures(results, time.perf_counter() - t0), indent=2) + "\n")
    if args.details:
        doc = {
            "traces": held,
            "window_minutes": args.window_minutes,
            "lead_minutes": args.lead_minutes,
            "peak_tpm": args.peak_tpm,
            "tune_windows": args.tune_windows,
            "no_rule_grids": args.no_rule_grids,
            "grids": None if args.no_rule_grids else grids,
            "action_family": "the model's action mapping, each action as a fixed rule without jump window",
            "policy_dir": args.policy_dir,
            "seconds": round(time.perf_counter() - t0, 1),
            "results": results,
        }
        Path(args.details).write_text(json.dumps(doc, indent=2, default=float) + "\n")
    return 0


def flat_figures(results: dict[str, dict], seconds: float) -> dict[str, float | int | None]:
    """One flat object: `<trace>_<column>_{pct_of_oracle,downtime_minutes,expected_profit_usd}` and `seconds`."""
    flat: dict[str, float | int | None] = {"seconds": round(seconds, 1)}
    for fold, res in results.items():
        for column, summary in res["summary"].items():
            for figure, value in summary.items():
                flat[f"{fold}_{column}_{figure}".replace("-", "_")] = value
    return flat


def format_table(results: dict[str, dict], columns: list[str]) -> str:
    """% of the oracle / downtime minutes of `columns`, one row per held-out trace."""
    head = f"{'held-out trace':<16}" + "".join(f"{LABELS[c]:>24}" for c in columns)
    lines = ["% of oracle / downtime minutes (each trace's windows summed)", head]
    for fold, r in results.items():
        cells = []
        for c in columns:
            s = r["summary"][c]
            pct = "-" if s["pct_of_oracle"] is None else f"{s['pct_of_oracle']:.1f}"
            cells.append(f"{pct + ' / ' + str(s['downtime_minutes']):>24}")
        lines.append(f"{fold:<16}" + "".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
