"""`fleetpilot train --loads broad`: training on the broad mixture (the randomized generator plus windows of
real traces), validated and tested on loads it never trained on.

The mixture (`training.env.MixtureSampler`): `generator` (the randomized generator `sim.load.broad_load`,
ranges `sim.params.BroadLoadParams`), `seed` (the seed's generator, weight 0 unless asked for) and windows of
the traces: by default every CSV in the development traces (`../shared/data/traces` next to the repository,
or --broad-traces DIR), or the --trace files. `--exclude-trace NAME` leaves a trace out entirely: it is never
read, so no episode, validation or test run can come from it (leave-one-trace-out folds).

Each trace is cut in time by --split like `train --trace`: episodes come from its first part only (time-stretched,
rescaled to a drawn peak, noised: `sim.params.TraceWindowParams`), its middle part is a validation run (keeps the
best update), its last part a test run (the printed report). The generator validates on its own seeds
(`eval_seeds`) and is tested on --test-seeds, each drawn from a stream that training never draws from.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from fleetpilot.policies.errors import CliError

#: The development traces, where the repository's tests find them: ../shared/data/traces next to the checkout.
DEV_TRACE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
#: The default mixture: half randomized generator, half trace windows (equal shares per trace).
DEFAULT_MIXTURE = "generator=0.5,traces=0.5"
#: Peak (tpm) each trace is rescaled to for its validation and test runs, unless --peak-tpm says otherwise.
EVAL_PEAK_TPM = 10_000.0
#: Separate the generator's validation and test streams from each other and from training's (which seeds
#: numpy with a plain integer per fleet).
_BROAD_STREAM, _PARTS = 0xB40AD, {"validation": 1, "test": 2}


def broad_run(seed: int, minutes: int, part: str, params=None, max_load_tpm: float = 100_000.0):
    """A backtest Run of the randomized generator: `part` ('validation' or 'test') and `seed` pick a stream
    that training never draws from (load from its child 0, the capacity-noise key from child 1)."""
    from fleetpilot.sim.load import broad_load
    from fleetpilot.training.backtest import Run

    load_ss, noise_ss = np.random.SeedSequence([seed, _BROAD_STREAM, _PARTS[part]]).spawn(2)
    load, start, _ = broad_load(np.random.default_rng(load_ss), minutes + 1, params, max_load_tpm)
    key = int(noise_ss.generate_state(1, dtype=np.uint64)[0])
    return Run(f"broad-{part}-{seed}", load, start, key)


def resolve_trace(name: str, names: list[str], flag: str) -> str:
    """A trace named by its file stem, file name, or a prefix of the stem that only one trace has."""
    stem = name[:-4] if name.lower().endswith(".csv") else name
    if stem in names:
        return stem
    hits = [n for n in names if n.startswith(stem)] if stem else []
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise CliError(f"{flag} {name}: ambiguous, it names {', '.join(hits)}")
    raise CliError(f"{flag} {name}: unknown trace (known: {', '.join(names) or 'none'})")


def parse_mixture(text: str) -> dict[str, float]:
    """'generator=W,seed=W,traces=W,TRACE=W' (any subset) as {key: weight}; weights non-negative numbers."""
    out: dict[str, float] = {}
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise CliError(f"--mixture {text}: expected KEY=WEIGHT items, e.g. {DEFAULT_MIXTURE}")
        try:
            w = float(value)
        except ValueError:
            raise CliError(f"--mixture {text}: weight {value.strip()!r} of {key} is not a number") from None
        if not (w >= 0 and np.isfinite(w)):
            raise CliError(f"--mixture {text}: weight of {key} must be a finite number >= 0")
        if key in out:
            raise CliError(f"--mixture {text}: {key} is given twice")
        out[key] = w
    if not out:
        raise CliError(f"--mixture {text!r}: empty; expected e.g. {DEFAULT_MIXTURE}")
    return out


def _trace_paths(args) -> tuple[list[Path], bool, str]:
    """(trace files, whether each must be usable, where they came from)."""
    if args.trace:
        return [Path(p) for p in args.trace], True, "--trace"
    d = Path(args.broad_traces) if args.broad_traces else DEV_TRACE_DIR
    if not d.is_dir():
        return [], False, str(d)
    return sorted(p for p in d.glob("*.csv") if p.is_file()), False, str(d)


def broad_data(args, cfg, fleet, split):
    """The TrainData of `train --loads broad` (see the module docstring)."""
    from fleetpilot.policies.observation import HISTORY_MINUTES
    from fleetpilot.sim.load import read_trace
    from fleetpilot.training.backtest import synthetic_run, trace_run
    from fleetpilot.training.cli import TrainData, parse_seeds, split_bounds, split_fractions, split_history
    from fleetpilot.training.env import GENERATOR, SEED_GENERATOR, MixtureSampler

    spec = parse_mixture(args.mixture or DEFAULT_MIXTURE)
    paths, strict, source = _trace_paths(args)
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
