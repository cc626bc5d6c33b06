"""Training-side subcommands: `backtest`, `traces generate`, `tune`, `train`, `policies`."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from fleetpilot.policies.errors import CliError
from fleetpilot.policies.registry import RULE_NAMES


def parse_seeds(text: str) -> list[int]:
    """'A..B' (inclusive) or 'A,B,C' or 'A'."""
    m = re.fullmatch(r"\s*(\d+)\s*\.\.\s*(\d+)\s*", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if b < a:
            raise CliError(f"--seeds {text}: the range is empty (B < A)")
        return list(range(a, b + 1))
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not parts or not all(x.isdigit() for x in parts):
        raise CliError(f"--seeds {text!r}: expected A..B, A,B,C or A (non-negative integers)")
    return [int(x) for x in parts]


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


def add_ray_option(p: argparse.ArgumentParser) -> None:
    """`--ray`: the fan-out of training.fanout (imported only when used: the daemon's CLI loads this module)."""
    p.add_argument(
        "--ray",
        metavar="auto|local|ADDRESS",
        default=None,
        help="run the work as Ray tasks: 'auto' (the cluster this node joined, or RAY_ADDRESS), 'local' (a private "
        "Ray on this machine), HOST:PORT or ray://HOST:10001; without it, in this process (docs/distributed.md)",
    )


def add_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace", action="append", default=[], metavar="FILE", help="trace CSV (timestamp,requests); repeatable"
    )
    p.add_argument("--synthetic", action="store_true", help="the seed's synthetic load")
    p.add_argument("--seeds", default="1000..1009", help="synthetic seeds, A..B inclusive (default 1000..1009)")
    p.add_argument(
        "--minutes",
        type=_positive(int),
        default=None,
        help="scored minutes per run (synthetic: default 10000; traces: default the whole selection)",
    )
    p.add_argument("--peak-tpm", type=_positive(float), default=None, help="rescale each trace so its peak is this")
    p.add_argument("--fill-gaps", action="store_true", help="interpolate missing minutes in traces instead of refusing")
    p.add_argument(
        "--from",
        dest="start_fraction",
        type=_fraction,
        default=0.0,
        help="score each trace from this fraction of its length (default 0)",
    )
    p.add_argument(
        "--to",
        dest="end_fraction",
        type=_fraction,
        default=1.0,
        help="score each trace up to this fraction of its length (default 1)",
    )


def build_runs(args) -> list:
    from fleetpilot.policies.observation import HISTORY_MINUTES
    from fleetpilot.sim.load import read_trace
    from fleetpilot.training.backtest import synthetic_run, trace_run

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
    from fleetpilot.policies.registry import BACKTEST_BASELINES, make_policy
    from fleetpilot.training.backtest import ORACLE, backtest_fanout, format_table, plot, write_json

    if args.plot and not args.plot.lower().endswith(".png"):
        raise CliError(f"--plot {args.plot}: the plot is written as PNG; give a FILE.png")
    for out in (args.json, args.plot):
        if out and not Path(out).resolve().parent.is_dir():
            raise CliError(f"cannot write {out}: directory {Path(out).resolve().parent} does not exist")
    names = args.policy or [*BACKTEST_BASELINES, ORACLE]
    if len(set(names)) != len(names):
        raise CliError("a --policy is given twice")
    from fleetpilot.policies.registry import PolicyError

    try:
        for n in names:  # an unknown name is refused before any work starts (the tasks build their own)
            if n != ORACLE:
                make_policy(n)
    except PolicyError as exc:
        raise CliError(f"{exc} (or {ORACLE} in a backtest)") from None
    runs = build_runs(args)
    t0 = time.perf_counter()
    report = backtest_fanout(runs, names, ray_address=args.ray)
    dt = time.perf_counter() - t0
    print(format_table(report, per_run=args.per_run))
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

    from fleetpilot.sim.load import Load, synthetic_load, write_trace

    if not Path(args.out).resolve().parent.is_dir():
        raise CliError(f"cannot write {args.out}: directory {Path(args.out).resolve().parent} does not exist")
    load = synthetic_load(np.random.default_rng(args.seed), args.minutes)
    write_trace(args.out, Load(f"synthetic-{args.seed}", load))
    print(f"wrote {args.minutes} minutes to {args.out}")
    return 0


def cmd_tune(args) -> int:
    from fleetpilot.training.tune import tune

    best = tune(args.policy, build_runs(args), ray_address=args.ray)
    print(json.dumps(best, indent=2))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("backtest", help="replay policies on loads with common random numbers")
    add_load_options(p)
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="NAME",
        help=f"{', '.join(RULE_NAMES)}, oracle, default, or a model directory; repeatable",
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="plot load and capacity per policy")
    p.add_argument("--per-run", action="store_true", help="print a table per run before the summary")
    add_ray_option(p)
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
    u.add_argument("--policy", required=True, choices=RULE_NAMES)
    add_ray_option(u)
    u.set_defaults(func=cmd_tune)
    add_training_commands(sub)


def _train_config(path: str | None, args):
    """PPOConfig (and FleetParams) from an optional YAML file and the command line."""
    import dataclasses

    import yaml

    from fleetpilot.sim.params import FleetParams
    from fleetpilot.training.ppo import PPOConfig

    data: dict = {}
    if path:
        from fleetpilot.policies.files import (
            MAX_CONFIG_BYTES,
            DuplicateKeyError,
            FileReadError,
            load_yaml,
            read_regular,
        )

        try:
            data = load_yaml(read_regular(path, MAX_CONFIG_BYTES).decode("utf-8-sig")) or {}
        except OSError as exc:
            raise CliError(f"--config {path}: cannot read: {exc.strerror}") from None
        except (FileReadError, UnicodeDecodeError) as exc:
            raise CliError(f"--config {path}: cannot read: {exc}") from None
        except DuplicateKeyError as exc:
            raise CliError(f"--config {path}:{exc.line}: {exc}") from None
        except yaml.YAMLError as exc:
            raise CliError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise CliError(f"--config {path}: expected a mapping of PPO settings")
    fleet_data = data.pop("fleet", {}) or {}
    known = {f.name for f in dataclasses.fields(PPOConfig)}
    for key in data:
        if key not in known:
            raise CliError(f"--config {path}: unknown field '{key}' (known: {', '.join(sorted(known))})")
    if "eval_seeds" in data:
        data["eval_seeds"] = tuple(data["eval_seeds"])
    if args.steps is not None:
        data["total_steps"] = args.steps
    if args.seed is not None:
        data["seed"] = args.seed
    if getattr(args, "threads", None) is not None:  # `--trace-dir`: one thread per task
        data["threads"] = args.threads
    try:
        cfg = PPOConfig(**data)
        fleet = FleetParams(**fleet_data)
    except (TypeError, ValueError) as exc:
        raise CliError(f"--config {path}: {str(exc).splitlines()[0]}") from None
    return cfg, fleet


def cmd_train(args) -> int:
    import dataclasses

    from fleetpilot.policies.observation import HISTORY_MINUTES
    from fleetpilot.policies.registry import TRAIN_BASELINES, make_policy
    from fleetpilot.sim.load import Augment, read_trace
    from fleetpilot.training.backtest import backtest, format_table, trace_run
    from fleetpilot.training.env import LoadSampler
    from fleetpilot.training.export import write_model
    from fleetpilot.training.ppo import TorchPolicy, train, validation_runs

    if getattr(args, "trace_dir", None):
        from fleetpilot.training.train_dir import cmd_train_dir

        return cmd_train_dir(args, cmd_train)
    if getattr(args, "ray", None):
        raise CliError("--ray fans out --trace-dir (one task per history); one training runs in this process")
    cfg, fleet = _train_config(args.config, args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a directory")
    sampler, val_runs, loads_info = None, None, []
    if args.trace:
        train_parts, val_runs = [], []
        for path in args.trace:
            load = read_trace(path, fill_gaps=args.fill_gaps)
            if args.peak_tpm is not None:
                load = load.rescaled(args.peak_tpm)
            cut = int(load.minutes * (1.0 - args.holdout))
            train_part, held = load.window(0, cut, load.name), cut
            if train_part.minutes < 1441:
                raise CliError(f"{path}: {train_part.minutes} training minutes; at least a day (1441) is needed")
            train_parts.append(train_part)
            val_runs.append(trace_run(load, held, load.minutes - held - 1, HISTORY_MINUTES))
            loads_info.append(
                {
                    "trace": str(path),
                    "minutes": load.minutes,
                    "train_minutes": cut,
                    "validation_minutes": load.minutes - held - 1,
                    "peak_tpm": args.peak_tpm,
                }
            )
        episode = min(cfg.episode_minutes, min(t.minutes for t in train_parts) - 1)
        cfg = dataclasses.replace(cfg, episode_minutes=episode)
        sampler = LoadSampler(traces=train_parts, augment=Augment(), max_load_tpm=fleet.max_load_tpm)
    else:
        val_runs = validation_runs(cfg)
    t0 = time.perf_counter()
    budget = args.budget_minutes * 60 if args.budget_minutes else None
    result = train(
        cfg, out, sampler=sampler, fleet=fleet, val_runs=val_runs, budget_seconds=budget, resume=not args.no_resume
    )
    seconds = time.perf_counter() - t0
    learned = TorchPolicy(result["agent"], result["mapping"], name=args.name)
    pols = {
        args.name: learned,
        **{name: make_policy(name) for name in TRAIN_BASELINES},
        "oracle": None,
    }
    report = backtest(val_runs, pols, fleet)
    print(format_table(report))
    command = "fleetpilot train " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else None
    training_info = {
        "ppo": dataclasses.asdict(cfg),
        "steps": result["steps"],
        "seconds": round(seconds, 1),
        "start_rule": result["start_rule"],
        "selected_update": result["selected_update"],
        "loads": loads_info or [{"synthetic": "seed generator", "validation_seeds": list(cfg.eval_seeds)}],
        "command": command,
    }
    validation = {"runs": [r["load"] for r in report.runs], "summary": report.summary}
    manifest = write_model(
        result["agent"], result["mapping"], out, args.name, fleet.model_dump(), training_info, validation
    )
    print(f"wrote {out / 'policy.onnx'} and {manifest}")
    return 0


def cmd_policies_list(args) -> int:
    from fleetpilot.policies.onnx_policy import ModelError, read_manifest
    from fleetpilot.policies.registry import MODELS_DIR, RULES, shipped_models

    for name in RULES:
        print(f"{name:<18} rule")
    for name in shipped_models():
        try:
            m = read_manifest(MODELS_DIR / name)
            pct = next(
                (
                    s.get("pct_of_oracle")
                    for s in m.get("validation", {}).get("summary", [])
                    if s.get("policy") == m.get("name")
                ),
                None,
            )
            extra = f" validation {pct}% of oracle" if pct is not None else ""
            print(f"{name:<18} model (obs v{m['observation'].get('version')}){extra}")
        except ModelError as exc:
            print(f"{name:<18} model: unusable: {exc}")
    return 0


def cmd_policies_inspect(args) -> int:
    from fleetpilot.policies.onnx_policy import verify
    from fleetpilot.policies.registry import RULES, make_policy, model_dir

    if args.name in RULES:
        pol = make_policy(args.name)
        print(json.dumps({"name": args.name, "kind": "rule", "params": pol.params.model_dump()}, indent=2))
        return 0
    d = model_dir(args.name)
    if d is None:
        raise CliError(f"unknown policy {args.name!r}")
    manifest, model = verify(d)
    manifest = dict(manifest, path=str(d), verified="sha256 and observation spec match")
    print(json.dumps(manifest, indent=2))
    return 0


def add_training_commands(sub) -> None:
    t = sub.add_parser("train", help="train a PPO policy on synthetic load or your own history; export ONNX")
    t.add_argument(
        "--trace", action="append", default=[], metavar="FILE", help="history CSV (timestamp,requests); repeatable"
    )
    t.add_argument("--peak-tpm", type=_positive(float), default=None, help="rescale each trace so its peak is this")
    t.add_argument("--fill-gaps", action="store_true", help="interpolate missing minutes in traces")
    t.add_argument(
        "--holdout", type=_fraction, default=1 / 3, help="last share of each trace kept for validation (default 1/3)"
    )
    t.add_argument("--budget-minutes", type=_positive(float), default=None, help="stop training after this wall time")
    t.add_argument(
        "--steps", type=_positive(int), default=None, help="fleet-minutes of experience (overrides the config)"
    )
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--config", metavar="FILE", help="YAML of PPO settings (training.ppo.PPOConfig fields, plus fleet:)")
    t.add_argument("--name", default="default", help="model name recorded in the manifest")
    t.add_argument("--no-resume", action="store_true", help="start over even if DIR has a checkpoint")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument(
        "--trace-dir", metavar="DIR", help="train one policy per *.csv history in DIR, each into --out DIR/STEM"
    )
    add_ray_option(t)
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("policies", help="shipped policies")
    psub = p.add_subparsers(dest="policies_command", required=True, parser_class=type(t))
    lst = psub.add_parser("list", help="rule policies and shipped models")
    lst.set_defaults(func=cmd_policies_list)
    ins = psub.add_parser("inspect", help="a policy's parameters or a model's verified manifest")
    ins.add_argument("name")
    ins.set_defaults(func=cmd_policies_inspect)
