"""Training-side subcommands: `backtest`, `traces generate`, `tune`, `train`, `policies`."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from controller.cli import CliError


def parse_seeds(text: str) -> list[int]:
    """'A..B' (inclusive) or 'A,B,C' or 'A'."""
    m = re.fullmatch(r"\s*(\d+)\s*\.\.\s*(\d+)\s*", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if b < a:
            raise CliError(f"--seeds {text}: the range is empty (B < A)")
        return list(range(a, b + 1))
    try:
        return [int(x) for x in text.split(",") if x.strip()] or _bad_seeds(text)
    except ValueError:
        _bad_seeds(text)
        raise


def _bad_seeds(text: str) -> list[int]:
    raise CliError(f"--seeds {text!r}: expected A..B, A,B,C or A (non-negative integers)")


def _positive(kind):
    def conv(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return v
    return conv


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be within [0, 1]")
    return v


def add_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", action="append", default=[], metavar="FILE", help="trace CSV (timestamp,requests); repeatable")
    p.add_argument("--synthetic", action="store_true", help="the seed's synthetic load")
    p.add_argument("--seeds", default="1000..1009", help="synthetic seeds, A..B inclusive (default 1000..1009)")
    p.add_argument("--minutes", type=_positive(int), default=None,
                   help="scored minutes per run (synthetic: default 10000; traces: default the whole selection)")
    p.add_argument("--peak-tpm", type=_positive(float), default=None, help="rescale each trace so its peak is this")
    p.add_argument("--fill-gaps", action="store_true", help="interpolate missing minutes in traces instead of refusing")
    p.add_argument("--from", dest="start_fraction", type=_fraction, default=0.0,
                   help="score each trace from this fraction of its length (default 0)")
    p.add_argument("--to", dest="end_fraction", type=_fraction, default=1.0,
                   help="score each trace up to this fraction of its length (default 1)")


def build_runs(args) -> list:
    from policies.observation import HISTORY_MINUTES
    from training.backtest import synthetic_run, trace_run
    from training.load import read_trace

    if args.synthetic and args.trace:
        raise CliError("use either --synthetic or --trace, not both")
    if not args.synthetic and not args.trace:
        raise CliError("no load: give --synthetic (with --seeds) or one or more --trace FILE")
    if args.synthetic:
        if args.peak_tpm is not None:
            raise CliError("--peak-tpm applies to --trace only (the synthetic load has the seed's scale)")
        return [synthetic_run(s, args.minutes or 10_000) for s in parse_seeds(args.seeds)]
    if args.end_fraction <= args.start_fraction:
        raise CliError(f"--from {args.start_fraction} must be below --to {args.end_fraction}")
    runs = []
    for path in args.trace:
        load = read_trace(path, fill_gaps=args.fill_gaps)
        if args.peak_tpm is not None:
            load = load.rescaled(args.peak_tpm)
        first = int(load.minutes * args.start_fraction)
        last = int(load.minutes * args.end_fraction) - 1  # the last scored minute (index)
        minutes = last - first
        if args.minutes is not None:
            minutes = min(minutes, args.minutes)
        if minutes < 1:
            raise CliError(f"{path}: too short to score (needs at least 2 minutes in the selection)")
        runs.append(trace_run(load, first, minutes, lead=HISTORY_MINUTES))
    return runs


def cmd_backtest(args) -> int:
    from policies.registry import make_policy
    from training.backtest import ORACLE, backtest, format_table, plot, write_json

    if args.plot and not args.plot.lower().endswith(".png"):
        raise CliError(f"--plot {args.plot}: the plot is written as PNG; give a FILE.png")
    for out in (args.json, args.plot):
        if out and not Path(out).resolve().parent.is_dir():
            raise CliError(f"cannot write {out}: directory {Path(out).resolve().parent} does not exist")
    names = args.policy or ["static", "target-tracking", "step", "predictive", ORACLE]
    if len(set(names)) != len(names):
        raise CliError("a --policy is given twice")
    policies = {n: (None if n == ORACLE else make_policy(n)) for n in names}
    runs = build_runs(args)
    t0 = time.perf_counter()
    report = backtest(runs, policies)
    dt = time.perf_counter() - t0
    print(format_table(report))
    print(f"({dt:.1f} s)", file=sys.stderr)
    if args.json:
        write_json(report, args.json)
    if args.plot:
        try:
            plot(report, args.plot)
        except ImportError:
            raise CliError("--plot needs matplotlib: pip install 'fleetpilot[train]'") from None
    return 0


def cmd_traces_generate(args) -> int:
    import numpy as np

    from training.load import Load, synthetic_load, write_trace

    if not Path(args.out).resolve().parent.is_dir():
        raise CliError(f"cannot write {args.out}: directory {Path(args.out).resolve().parent} does not exist")
    load = synthetic_load(np.random.default_rng(args.seed), args.minutes)
    write_trace(args.out, Load(f"synthetic-{args.seed}", load))
    print(f"wrote {args.minutes} minutes to {args.out}")
    return 0


def cmd_tune(args) -> int:
    from training.tune import tune

    best = tune(args.policy, build_runs(args))
    print(json.dumps(best, indent=2))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("backtest", help="replay policies on loads with common random numbers")
    add_load_options(p)
    p.add_argument("--policy", action="append", default=[], metavar="NAME",
                   help="static, target-tracking, step, predictive, oracle, default, or a model directory; repeatable")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="plot load and capacity per policy")
    p.set_defaults(func=cmd_backtest)

    t = sub.add_parser("traces", help="load traces")
    tsub = t.add_subparsers(dest="traces_command", required=True, parser_class=type(p))
    g = tsub.add_parser("generate", help="write a synthetic load CSV")
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--minutes", type=_positive(int), required=True)
    g.add_argument("--out", required=True, metavar="FILE")
    g.set_defaults(func=cmd_traces_generate)

    u = sub.add_parser("tune", help="grid-search a rule's parameters on loads (reproduces the shipped defaults)")
    add_load_options(u)
    u.add_argument("--policy", required=True, choices=["target-tracking", "step", "predictive", "static"])
    u.set_defaults(func=cmd_tune)
