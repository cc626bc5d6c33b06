"""Training-side subcommands: `backtest`, `traces generate`, `tune`, `train`, `policies`."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    from fleetpilot.training.progress import Progress

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
    with Progress(len(runs) * len(names), f"backtest ({len(runs)} loads x {len(names)} policies)", "runs") as bar:
        report = backtest_fanout(runs, names, ray_address=args.ray, forecast=True, progress=bar.update)
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

    best = tune(args.policy, build_runs(args), ray_address=args.ray, progress=True)
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
            yaml_problem,
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
            line, problem = yaml_problem(exc)
            raise CliError(f"--config {path}{'' if line is None else f':{line}'}: not valid YAML ({problem})") from None
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
        _check_start(cfg)
    except (TypeError, ValueError) as exc:
        raise CliError(f"--config {path}: {str(exc).splitlines()[0]}") from None
    if args.steps is not None and cfg.method == "rollout-pi":  # it would be silently ignored
        raise CliError(
            f"--steps sets PPO's experience; --config {path} trains by rollout-pi, whose experience is "
            "pi_iterations rounds of pi_loads loads (set those in the config)"
        )
    return cfg, fleet


def _check_start(cfg) -> None:
    """ValueError naming the field when the starting rule's actions or the imitation's smoothing are unusable
    (before any load is drawn)."""
    from fleetpilot.policies.actions import ActionMapping
    from fleetpilot.training.ppo import action_index

    try:
        mapping = ActionMapping.from_json(cfg.mapping)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"mapping: not an action mapping (missing or wrong {exc})") from None
    for name in ("init_action", "init_jump_action"):
        text = getattr(cfg, name)
        if not isinstance(text, str):
            raise ValueError(f"{name}: {text!r} is not auto, U,C or risk=R")
        if text != "auto":
            try:
                action_index(mapping, text)
            except ValueError as exc:
                raise ValueError(
                    f"{name}: {exc}" if str(exc).startswith(text) else f"{name}: {text!r} is not auto, U,C or risk=R"
                ) from None
    for name in ("imitation_smoothing", "pi_learning_rate"):
        if isinstance(getattr(cfg, name), bool) or not isinstance(getattr(cfg, name), int | float):
            raise ValueError(f"{name}: {getattr(cfg, name)!r} is not a number")
    if isinstance(cfg.pi_skip_minutes, bool) or not isinstance(cfg.pi_skip_minutes, int) or cfg.pi_skip_minutes < 0:
        raise ValueError(f"pi_skip_minutes: {cfg.pi_skip_minutes!r} is not a whole number >= 0")
    if not 0.0 <= cfg.imitation_smoothing < 1.0:
        raise ValueError(f"imitation_smoothing: {cfg.imitation_smoothing} is not in [0, 1)")
    if cfg.method not in ("ppo", "rollout-pi"):
        raise ValueError(f"method: {cfg.method!r} is not ppo or rollout-pi")
    if cfg.pi_holdout not in ("loads", "sources"):
        raise ValueError(f"pi_holdout: {cfg.pi_holdout!r} is not loads or sources")
    if not isinstance(cfg.actor_features, list) or not all(isinstance(x, str) for x in cfg.actor_features):
        raise ValueError(f"actor_features: {cfg.actor_features!r} is not a list of feature names")
    from fleetpilot.policies.observation import FEATURE_NAMES

    unknown = [x for x in cfg.actor_features if x not in FEATURE_NAMES]
    if unknown:
        raise ValueError(
            f"actor_features: {', '.join(map(repr, unknown))} not an observation feature (policies/observation.py)"
        )
    twice = sorted({x for x in cfg.actor_features if cfg.actor_features.count(x) > 1})
    if twice:
        raise ValueError(f"actor_features: {', '.join(map(repr, twice))} named twice")
    # in the observation's order: the same features in another order are the same network (and resume it)
    cfg.actor_features = sorted(cfg.actor_features, key=FEATURE_NAMES.index)
    for name in ("pi_iterations", "pi_loads", "pi_hold_minutes", "pi_period_minutes", "pi_epochs"):
        value, least = getattr(cfg, name), 0 if name == "pi_iterations" else 1  # 0 rounds: the imitated rule
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}: {getattr(cfg, name)!r} is not a whole number >= {least}")
    if cfg.pi_hold_minutes > cfg.pi_period_minutes:
        raise ValueError(
            f"pi_hold_minutes: {cfg.pi_hold_minutes} is longer than pi_period_minutes {cfg.pi_period_minutes}"
        )
    from fleetpilot.training.policy_iteration import periods_kept

    if cfg.method == "rollout-pi" and not periods_kept(cfg.episode_minutes, cfg.pi_skip_minutes, cfg.pi_period_minutes):
        raise ValueError(
            f"pi_skip_minutes: {cfg.pi_skip_minutes} (rounded up to a whole period of {cfg.pi_period_minutes}) "
            f"leaves no period in episode_minutes {cfg.episode_minutes}"
        )
    if not cfg.pi_learning_rate > 0:
        raise ValueError(f"pi_learning_rate: {cfg.pi_learning_rate} is not > 0")


def parse_split(text: str) -> tuple[float, float, float]:
    """'TRAIN,VALIDATION,TEST' shares of each history (positive, summing to 1)."""
    parts = [x.strip() for x in text.split(",")]
    try:
        shares = tuple(float(x) for x in parts)
    except ValueError:
        raise CliError(f"--split {text}: expected three numbers TRAIN,VALIDATION,TEST (e.g. 0.6,0.2,0.2)") from None
    if len(shares) != 3 or not all(0.0 < x < 1.0 for x in shares):
        raise CliError(f"--split {text}: expected three shares TRAIN,VALIDATION,TEST, each between 0 and 1")
    if abs(sum(shares) - 1.0) > 1e-6:
        raise CliError(f"--split {text}: the three shares sum to {sum(shares):g}, not 1")
    return shares[0], shares[1], shares[2]


#: Minutes a trace's training part needs (a day of history plus the minute an episode starts from), and each of
#: its validation and test parts (an hour scored).
MIN_TRAIN_MINUTES = 1441
MIN_SCORED_MINUTES = 60


def split_bounds(minutes: int, split: tuple[float, float, float]) -> tuple[int, int]:
    """The first minute of the validation part and of the test part: the same cut `fleetpilot backtest --from
    F --to T` makes with F, T = `split_fractions(split)` (int(minutes x fraction))."""
    f1, f2 = split_fractions(split)
    return int(minutes * f1), int(minutes * f2)


def split_fractions(split: tuple[float, float, float]) -> tuple[float, float]:
    """Where validation and test start, as fractions of a trace (rounded so the printed value is exact)."""
    return round(split[0], 10), round(split[0] + split[1], 10)


def _minute_range(load, first: int, end: int) -> dict:
    """A part of a history as minute indices [first, end) and the UTC times of its first and end minute."""
    from datetime import timedelta

    def utc(i: int) -> str:
        return (load.start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {"minutes": [first, end], "utc": [utc(first), utc(end)]}


def _backtest_command(args, out: Path, policies: list[str], split) -> str:
    """The `fleetpilot backtest` command that scores the test part exactly as `train` reports it."""
    import shlex

    words = ["fleetpilot", "backtest"]
    if args.trace:
        for path in args.trace:
            words += ["--trace", str(path)]
        if args.peak_tpm is not None:
            words += ["--peak-tpm", f"{args.peak_tpm:g}"]
        if args.fill_gaps:
            words.append("--fill-gaps")
        words += ["--from", repr(split_fractions(split)[1]), "--to", "1"]
    else:
        words += ["--synthetic", "--seeds", args.test_seeds, "--minutes", str(args.test_minutes)]
    for name in policies:
        words += ["--policy", str(out) if name == args.name else name]
    return " ".join(shlex.quote(w) for w in words)


def split_history(load, split: tuple[float, float, float], path, split_text: str):
    """A history cut in time order into (training part, validation run, test run, {"data_split": ...}).

    A run observes the first minute of its part and scores the rest; its lead-in reads the minutes before
    (the past, as a daemon's history would), never a minute after its part. Too short a history is a CliError
    naming the file and the part that is too short."""
    from fleetpilot.policies.observation import HISTORY_MINUTES
    from fleetpilot.training.backtest import trace_run

    n = load.minutes
    v0, s0 = split_bounds(n, split)
    if v0 < MIN_TRAIN_MINUTES:
        raise CliError(
            f"{path}: too short for --split {split_text}: {n} minutes leave {v0} for training; "
            f"at least a day ({MIN_TRAIN_MINUTES}) is needed"
        )
    for part, first, end in (("validation", v0, s0), ("test", s0, n)):
        if end - first - 1 < MIN_SCORED_MINUTES:
            raise CliError(
                f"{path}: too short for --split {split_text}: {n} minutes leave {max(end - first - 1, 0)} scored "
                f"minutes for {part}; at least {MIN_SCORED_MINUTES} are needed"
            )
    info = {
        "data_split": {
            "shares": list(split),
            "train": _minute_range(load, 0, v0),
            "validation": _minute_range(load, v0, s0),
            "test": _minute_range(load, s0, n),
            "used_for": {
                "train": "choosing the starting rule, imitation, PPO episodes",
                "validation": "keeping the best update (and the manifest's validation table)",
                "test": "the report printed after training (the manifest's training.test)",
            },
        }
    }
    return (
        load.window(0, v0, load.name),
        trace_run(load, v0, s0 - v0 - 1, HISTORY_MINUTES),
        trace_run(load, s0, n - s0 - 1, HISTORY_MINUTES),
        info,
    )


#: The fixed small case every exported model is also scored on (`training.check` in its manifest), so a test
#: can load a shipped model and compare its figures with what training recorded (tests/test_shipped_model.py).
CHECK_SEEDS, CHECK_MINUTES = (3000, 3001), 2000


@dataclass
class TrainData:
    """What `cmd_train` trains, chooses and reports on: the training loads (a sampler over the training parts of
    the traces, or None for the synthetic generator), validation runs, test runs and what the manifest records."""

    cfg: Any
    sampler: Any
    val_runs: list
    test_runs: list
    loads_info: list[dict]
    what: str | None = None  #: what the test report covers (None: the --trace / --test-seeds wording)
    reproduce_traces: str | None = None  #: `--loads broad`: the backtest command of the traces' test parts


def cmd_train(args) -> int:
    from fleetpilot.training.ppo import CheckpointError, train

    if getattr(args, "trace_dir", None):
        if getattr(args, "loads", None) == "broad":
            raise CliError("--trace-dir trains one policy per history; --loads broad trains one on the mixture")
        from fleetpilot.training.train_dir import cmd_train_dir

        _train_config(args.config, args)  # a bad config is one line here, not one per history
        return cmd_train_dir(args, cmd_train)
    if getattr(args, "ray", None):
        raise CliError("--ray fans out --trace-dir (one task per history); one training runs in this process")
    cfg, fleet = _train_config(args.config, args)
    split = parse_split(args.split)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a directory")
    loads = _loads_mode(args)
    if loads == "broad":
        data = _broad_data(args, cfg, fleet, split)
    else:
        data = _trace_data(args, cfg, fleet, split) if args.trace else _synthetic_data(args, cfg)
    lock = _lock_out(out)
    try:
        t0 = time.perf_counter()
        budget = args.budget_minutes * 60 if args.budget_minutes else None
        try:
            result = train(
                data.cfg,
                out,
                sampler=data.sampler,
                fleet=fleet,
                val_runs=data.val_runs,
                budget_seconds=budget,
                resume=not args.no_resume,
            )
        except CheckpointError as exc:
            raise CliError(str(exc)) from None
        _report_and_write(args, data, fleet, result, out, split, time.perf_counter() - t0)
    finally:
        if lock is not None:
            os.close(lock)
    return 0


def _lock_out(out: Path) -> int | None:
    """Create `--out` and hold `--out/.train.lock` for the training: a second training into the same directory
    would interleave its checkpoint, log and model with this one's, so it is refused, naming the holder. On a
    filesystem without locks (some NFS mounts) the training goes on unlocked, with a warning."""
    from fleetpilot.policies.files import LockHeld, hold_lock

    try:
        out.mkdir(parents=True, exist_ok=True)
        return hold_lock(out / ".train.lock")
    except LockHeld as held:
        raise CliError(
            f"--out {out}: another training is writing there (pid {held.pid}); wait for it or use another --out"
        ) from None
    except OSError as exc:
        if exc.filename is None and exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            print(f"warning: --out {out}: cannot lock it ({exc.strerror}); training without the lock", file=sys.stderr)
            return None
        raise CliError(f"--out {out}: cannot create or lock it: {exc.strerror}") from None


def _loads_mode(args) -> str:
    """`--loads`: synthetic (the seed's generator), traces (--trace histories) or broad (the mixture); without
    it, traces when --trace is given, else synthetic. The broad mixture's options need --loads broad."""
    loads = getattr(args, "loads", None) or ("traces" if args.trace else "synthetic")
    if loads == "traces" and not args.trace:
        raise CliError("--loads traces needs one or more --trace FILE")
    if loads == "synthetic" and args.trace:
        raise CliError("--loads synthetic trains on the seed's generator; drop --trace or use --loads traces")
    if loads != "broad":
        for flag, value in (
            ("--exclude-trace", getattr(args, "exclude_trace", None)),
            ("--broad-traces", getattr(args, "broad_traces", None)),
            ("--mixture", getattr(args, "mixture", None)),
        ):
            if value:
                raise CliError(f"{flag} applies to --loads broad only")
    return loads


def _trace_data(args, cfg, fleet, split) -> TrainData:
    """Each trace split by time: training part (sampled in episodes), validation run, test run."""
    import dataclasses

    from fleetpilot.sim.load import Augment, read_trace
    from fleetpilot.training.env import LoadSampler

    train_parts, val_runs, test_runs, loads_info = [], [], [], []
    for path in args.trace:
        load = read_trace(path, fill_gaps=args.fill_gaps)
        if args.peak_tpm is not None:
            load = load.rescaled(args.peak_tpm)
        part, val_run, test_run, info = split_history(load, split, path, args.split)
        train_parts.append(part)
        val_runs.append(val_run)
        test_runs.append(test_run)
        loads_info.append({"trace": str(path), "minutes": load.minutes, "peak_tpm": args.peak_tpm, **info})
    episode = min(cfg.episode_minutes, min(t.minutes for t in train_parts) - 1)
    cfg = dataclasses.replace(cfg, episode_minutes=episode)
    sampler = LoadSampler(traces=train_parts, augment=Augment(), max_load_tpm=fleet.max_load_tpm)
    return TrainData(cfg, sampler, val_runs, test_runs, loads_info)


def _broad_data(args, cfg, fleet, split) -> TrainData:
    """`train --loads broad`: the mixture of training/mixture.py, validation and test runs (see its docstring)."""
    import hashlib
    import shlex

    from fleetpilot.policies.observation import HISTORY_MINUTES
    from fleetpilot.sim.load import read_trace
    from fleetpilot.training.backtest import synthetic_run, trace_run
    from fleetpilot.training.env import GENERATOR, SEED_GENERATOR, MixtureSampler
    from fleetpilot.training.mixture import (
        DEFAULT_MIXTURE,
        EVAL_PEAK_TPM,
        broad_run,
        parse_mixture,
        resolve_trace,
        trace_paths,
    )

    spec = parse_mixture(args.mixture or DEFAULT_MIXTURE)
    paths, strict, source = trace_paths(args)
    names = [p.stem for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CliError(f"{source}: two traces are named {dup[0]} (trace names are file stems)")
    excluded = sorted({resolve_trace(x, names, "--exclude-trace") for x in args.exclude_trace})
    named = {k: resolve_trace(k, names, "--mixture") for k in spec if k not in (GENERATOR, SEED_GENERATOR, "traces")}
    for key, stem in named.items():
        if stem in excluded:
            raise CliError(f"--mixture {key}: that trace is left out by --exclude-trace")
    trace_weight = spec.get("traces", 0.0) + sum(spec[k] for k in named)
    if trace_weight > 0 and not paths:
        raise CliError(
            f"--loads broad: no trace CSVs in {source}; give --broad-traces DIR, --trace FILE, "
            "or --mixture generator=1 for the generator alone"
        )

    test_seeds = parse_seeds(args.test_seeds)
    if set(test_seeds) & set(cfg.eval_seeds):
        raise CliError(f"--test-seeds {args.test_seeds}: overlap the validation seeds {list(cfg.eval_seeds)}")
    test_minutes = args.test_minutes = args.test_minutes or cfg.eval_minutes
    eval_peak = args.peak_tpm if args.peak_tpm is not None else EVAL_PEAK_TPM
    need = cfg.episode_minutes + 1
    parts, val_runs, test_runs, used, left_out = [], [], [], [], []
    for path in paths:
        if path.stem in excluded:
            continue  # never read: a fold cannot see its held-out trace
        weighted = path.stem in named.values() or spec.get("traces", 0.0) > 0
        if not weighted:
            continue
        load = read_trace(path, fill_gaps=args.fill_gaps).rescaled(eval_peak)
        v0, _ = split_bounds(load.minutes, split)
        try:
            if v0 < need:
                raise CliError(
                    f"{path}: too short for --loads broad: {load.minutes} minutes leave {v0} for training "
                    f"(--split {args.split}); an episode needs {need}"
                )
            part, _, _, info = split_history(load, split, path, args.split)
        except CliError as exc:
            if strict or path.stem in named.values():
                raise
            left_out.append({"trace": path.stem, "minutes": load.minutes, "reason": str(exc)})
            continue
        # the validation and test runs score at most eval_minutes and --test-minutes of their parts (from the
        # start of each part, as `fleetpilot backtest --from F --minutes N` does)
        v0, s0 = split_bounds(load.minutes, split)
        val_run = trace_run(load, v0, min(s0 - v0 - 1, cfg.eval_minutes), HISTORY_MINUTES)
        test_run = trace_run(load, s0, min(load.minutes - s0 - 1, test_minutes), HISTORY_MINUTES)
        info["scored_minutes"] = {"validation": val_run.minutes, "test": test_run.minutes}
        parts.append(part)
        val_runs.append(val_run)
        test_runs.append(test_run)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        used.append(
            {"trace": path.stem, "file": str(path), "sha256": digest, "minutes": load.minutes, "peak_tpm": eval_peak}
            | info
        )

    weights = {GENERATOR: spec.get(GENERATOR, 0.0), SEED_GENERATOR: spec.get(SEED_GENERATOR, 0.0)}
    rest = [p.name for p in parts if p.name not in named.values()]
    for p in parts:
        weights[p.name] = spec[next(k for k, v in named.items() if v == p.name)] if p.name in named.values() else 0.0
    for name in rest:
        weights[name] = spec.get("traces", 0.0) / len(rest)
    if sum(weights.values()) <= 0:
        raise CliError(
            f"--mixture {args.mixture or DEFAULT_MIXTURE}: the mixture is empty (every weight is 0, or no trace "
            "is left to draw from)"
        )
    sampler = MixtureSampler(weights, parts, max_load_tpm=fleet.max_load_tpm)

    generators = [c for c in (GENERATOR, SEED_GENERATOR) if sampler.weights.get(c, 0) > 0]
    for s in cfg.eval_seeds:
        if GENERATOR in generators:
            val_runs.append(broad_run(s, cfg.eval_minutes, "validation", sampler.generator, fleet.max_load_tpm))
        if SEED_GENERATOR in generators:
            val_runs.append(synthetic_run(s, cfg.eval_minutes))
    for s in test_seeds:
        if GENERATOR in generators:
            test_runs.append(broad_run(s, args.test_minutes, "test", sampler.generator, fleet.max_load_tpm))
        if SEED_GENERATOR in generators:
            test_runs.append(synthetic_run(s, args.test_minutes))

    manifest_info: dict[str, Any] = {
        "broad": {
            **sampler.describe(),
            "traces": used,
            "trace_source": source,
            "excluded": excluded,
            "left_out": left_out,
            "validation": {
                "traces": "the validation part of each trace above, rescaled to its peak_tpm, its first minutes",
                "generator_seeds": list(cfg.eval_seeds) if generators else [],
                "minutes": cfg.eval_minutes,
            },
            "test": {
                "traces": "the test part of each trace above, rescaled to its peak_tpm, its first minutes",
                "generator_seeds": test_seeds if generators else [],
                "minutes": args.test_minutes,
            },
        }
    }
    what = f"the test part of {len(used)} trace(s)" + (f" and test seeds {args.test_seeds}" if generators else "")
    reproduce = None
    if used:
        words = ["fleetpilot", "backtest"]
        for u in used:
            words += ["--trace", u["file"]]
        words += ["--peak-tpm", f"{eval_peak:g}", "--from", repr(split_fractions(split)[1]), "--to", "1"]
        words += ["--minutes", str(test_minutes)]
        if args.fill_gaps:
            words.append("--fill-gaps")
        reproduce = " ".join(shlex.quote(w) for w in words)
    return TrainData(cfg, sampler, val_runs, test_runs, [manifest_info], what=what, reproduce_traces=reproduce)


def _synthetic_data(args, cfg) -> TrainData:
    """The seed's generator: validation seeds from the config, test seeds from --test-seeds (disjoint)."""
    from fleetpilot.training.backtest import synthetic_run
    from fleetpilot.training.ppo import validation_runs

    test_seeds = parse_seeds(args.test_seeds)
    if set(test_seeds) & set(cfg.eval_seeds):
        raise CliError(f"--test-seeds {args.test_seeds}: overlap the validation seeds {list(cfg.eval_seeds)}")
    args.test_minutes = args.test_minutes or cfg.eval_minutes
    info = {
        "synthetic": "seed generator",
        "validation_seeds": list(cfg.eval_seeds),
        "test_seeds": test_seeds,
        "test_minutes": args.test_minutes,
    }
    test_runs = [synthetic_run(s, args.test_minutes) for s in test_seeds]
    return TrainData(cfg, None, validation_runs(cfg), test_runs, [info])


def _report_and_write(args, data: TrainData, fleet, result, out: Path, split, seconds: float) -> None:
    """Score the exported actor next to the baselines on validation, test and the fixed check case; print the
    test report with the command that reproduces it; write the model and its manifest."""
    import dataclasses

    import torch

    from fleetpilot.policies.registry import TRAIN_BASELINES, make_policy
    from fleetpilot.training.backtest import backtest, format_table, synthetic_run
    from fleetpilot.training.export import write_model
    from fleetpilot.training.ppo import TorchPolicy

    # the reports decide a few rows at a time: one thread (two spend milliseconds per layer in thread hand-offs
    # on a busy machine)
    torch.set_num_threads(1)
    learned = TorchPolicy(result.agent, result.mapping, name=args.name)
    pols = {args.name: learned, **{name: make_policy(name) for name in TRAIN_BASELINES}, "oracle": None}
    val_report = backtest(data.val_runs, pols, fleet)
    report = backtest(data.test_runs, pols, fleet, forecast=True)
    check = backtest([synthetic_run(s, CHECK_MINUTES) for s in CHECK_SEEDS], pols, fleet)
    what = data.what or ("the test part of each trace" if args.trace else f"test seeds {args.test_seeds}")
    print(f"test: {what} (never seen in training or validation)")
    print(format_table(report))
    reproduce: str | None
    if data.what is None:
        reproduce = _backtest_command(args, out, list(pols), split)
    else:  # --loads broad: the traces' part of the test (the generator's seeds have no backtest flag)
        import shlex

        words = [w for name in pols for w in ("--policy", str(out) if name == args.name else name)]
        reproduce = f"{data.reproduce_traces} {shlex.join(words)}" if data.reproduce_traces else None
    if reproduce:
        print(f"reproduce these test figures{' (the traces)' if data.what else ''} with:\n  {reproduce}")
    command = "fleetpilot train " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else None
    training_info = {
        "ppo": dataclasses.asdict(data.cfg),
        "steps": result.steps,
        "seconds": round(seconds, 1),
        "start_rule": result.start_rule,
        "selected_update": result.selected_update,
        "loads": data.loads_info,
        "command": command,
        "test": {
            "runs": [r["load"] for r in report.runs],
            "summary": report.summary,
            "forecast": report.forecast,
            "backtest_command": reproduce,
        },
        "check": {
            "seeds": list(CHECK_SEEDS),
            "minutes": CHECK_MINUTES,
            "summary": check.summary,
            "note": "synthetic seeds never used in training or validation; tests/test_shipped_model.py replays it",
        },
    }
    validation = {"runs": [r["load"] for r in val_report.runs], "summary": val_report.summary}
    manifest = write_model(result.agent, result.mapping, out, args.name, fleet.model_dump(), training_info, validation)
    print(f"wrote {out / 'policy.onnx'} and {manifest}")


def cmd_policies_list(args) -> int:
    from fleetpilot.policies.onnx_policy import ModelError, OnnxPolicy
    from fleetpilot.policies.registry import MODELS_DIR, RULES, shipped_models

    for name in RULES:
        print(f"{name:<18} rule")
    for name in shipped_models():
        try:
            # the load the daemon makes (manifest, features, sha256, action mapping, rise tail, the onnxruntime
            # session and its input and output widths): what is listed as a model loads
            m = OnnxPolicy.load(MODELS_DIR / name, providers=["CPUExecutionProvider"], threads=1).manifest
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
    from fleetpilot.policies.observation import OBS_DIM
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
    reads = f"reads {manifest['observation']['dim']} of this build's {OBS_DIM} features by name"
    manifest = dict(manifest, path=str(d), verified=f"sha256 and observation spec match ({reads})")
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
        "--loads",
        choices=("synthetic", "traces", "broad"),
        default=None,
        help="training loads: the seed's generator (default without --trace), your --trace histories (default "
        "with --trace), or broad: a randomized generator plus windows of real traces (training/mixture.py)",
    )
    t.add_argument(
        "--broad-traces",
        metavar="DIR",
        default=None,
        help="--loads broad: the trace CSVs of the mixture (default: the development traces, ../shared/data/traces); "
        "--trace FILE instead names them one by one",
    )
    t.add_argument(
        "--exclude-trace",
        action="append",
        default=[],
        metavar="NAME",
        help="--loads broad: leave this trace out entirely (file stem, file name or unique prefix); repeatable",
    )
    t.add_argument(
        "--mixture",
        default=None,
        metavar="KEY=W,...",
        help="--loads broad: component weights: generator, seed (the seed's generator), traces (shared equally), or "
        "a trace's name (default generator=0.5,traces=0.5)",
    )
    t.add_argument(
        "--split",
        default="0.6,0.2,0.2",
        metavar="TRAIN,VAL,TEST",
        help="shares of each history, in time order: train, validation (keeps the best update), test (the "
        "report); default 0.6,0.2,0.2",
    )
    t.add_argument(
        "--test-seeds",
        default="3000..3019",
        help="synthetic training only: seeds of the test report (default 3000..3019)",
    )
    t.add_argument(
        "--test-minutes",
        type=_positive(int),
        default=None,
        help="synthetic training only: minutes per test seed (default: the config's eval_minutes, 10000)",
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
