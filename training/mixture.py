"""`fleetpilot train --loads broad` (assembled by `training.cli._broad_data`): training on the broad mixture
(the randomized generator plus windows of real traces), validated and tested on loads it never trained on.

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

from pathlib import Path

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


def trace_paths(args) -> tuple[list[Path], bool, str]:
    """(trace files, whether each must be usable, where they came from)."""
    if args.trace:
        return [Path(p) for p in args.trace], True, "--trace"
    d = Path(args.broad_traces) if args.broad_traces else DEV_TRACE_DIR
    if not d.is_dir():
        return [], False, str(d)
    return sorted(p for p in d.glob("*.csv") if p.is_file()), False, str(d)
