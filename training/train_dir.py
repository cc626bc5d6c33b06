"""`fleetpilot train --trace-dir DIR --out OUT`: one policy per history file, fanned out (`training.fanout`).

Every `*.csv` file directly in DIR is trained as `fleetpilot train --trace FILE --out OUT/STEM` would with the
other options given (the same seed for each: a model does not depend on which files trained beside it, nor on
the order they ran in), except that each task runs with one torch thread. With `--ray`, each file is one Ray task:
the workers read FILE and write OUT/STEM at the same paths, so on a cluster of several nodes both must be on a
filesystem every node mounts (docs/distributed.md). A file that cannot be trained (a corrupt trace, too short)
is named in one line on stderr and the others still train. Exit code: 0 when all trained, 1 when some did not,
2 when none could.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fleetpilot.policies.errors import CliError
from fleetpilot.training.fanout import Outcome, map_tasks


def trace_files(directory: str) -> list[Path]:
    """The `*.csv` files directly in `directory` (not hidden), sorted by name; their stems must be distinct."""
    d = Path(directory)
    if not d.is_dir():
        raise CliError(f"--trace-dir {directory}: not a directory")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() == ".csv" and not p.name.startswith(".") and p.is_file())
    if not files:
        raise CliError(f"--trace-dir {directory}: no *.csv history files in it")
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise CliError(f"--trace-dir {directory}: {seen[p.stem].name} and {p.name} would share --out subdirectory")
        seen[p.stem] = p
    return files


def train_one(
    cmd_train: Callable[[argparse.Namespace], int], options: dict, argv: list[str], item: tuple[str, str]
) -> str:
    """One task: `cmd_train` (training.cli's, passed in) on one trace into its own directory; returns what it
    printed on stdout."""
    path, out = item
    args = argparse.Namespace(**options)
    args.trace, args.trace_dir, args.out, args.threads, args.ray = [path], None, out, 1, None
    buf = io.StringIO()
    saved = sys.argv
    sys.argv = argv  # the manifest records the command that was run, on a Ray worker too
    try:
        with contextlib.redirect_stdout(buf):
            cmd_train(args)
    finally:
        sys.argv = saved
    return buf.getvalue()


def cmd_train_dir(args, cmd_train: Callable[[argparse.Namespace], int]) -> int:
    if args.trace:
        raise CliError("use either --trace or --trace-dir, not both")
    files = trace_files(args.trace_dir)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    options = {k: v for k, v in vars(args).items() if k != "func"}
    items = [(str(p), str(out / p.stem)) for p in files]
    where = f"Ray at {args.ray}" if args.ray else "this process"
    print(f"training {len(items)} policies ({where}) into {out}", file=sys.stderr)
    t0 = time.perf_counter()
    done = [0]

    def report(i: int, o: Outcome) -> None:
        done[0] += 1
        path, sub = items[i]
        if o.ok:
            print(
                f"[{done[0]}/{len(items)}] {path}: trained into {sub} ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
            )
        else:
            msg = o.error or ""
            print(f"fleetpilot train: error: {msg if msg.startswith(path) else f'{path}: {msg}'}", file=sys.stderr)

    outcomes = map_tasks(
        functools.partial(train_one, cmd_train, options, list(sys.argv)), items, args.ray, on_done=report
    )
    for (path, _), o in zip(items, outcomes, strict=True):
        if o.ok:
            print(f"== {path}\n{o.value}", end="" if o.value.endswith("\n") else "\n")
    failed = [items[i][0] for i, o in enumerate(outcomes) if not o.ok]
    print(f"trained {len(items) - len(failed)} of {len(items)} histories into {out}", file=sys.stderr)
    if failed and len(failed) == len(items):
        return 2
    return 1 if failed else 0
