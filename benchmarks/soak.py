"""Soak: the daemon against the simulator for many simulated minutes, through the real tick.

The daemon is built from a config exactly as `fleetpilot run` builds it (simulator source, simulated group,
SQLite journal, metrics on a registry), backfilled, then its `run_tick()` - the very function the scheduler
calls - is driven in a loop: one tick is one simulated minute, so 100,000 ticks are 100,000 simulated minutes
(69 days) without the scheduler's sleeps. Measured:

- error ticks (`fleetpilot_ticks_total{outcome="error"}`): must be 0; partial ticks are reported too;
- resident memory (VmRSS) sampled every `--sample-every` ticks: growth after the warm-up (the first
  `--warmup` ticks: the history buffers fill, SQLite's page cache grows) at most 10 MB;
- journal rows == decisions == ticks x groups (`fleetpilot_decisions_total`, summed);
- tick time (median, mean, p99).

    .venv/bin/python benchmarks/soak.py [--minutes 100000] [--groups 1] [--policy default] [--json FILE]

Exit code 1 when a target is missed. tests/test_reliability_soak.py runs a 5,000-minute version in CI.
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

#: Resident-memory growth allowed after the warm-up (issue 6).
MAX_GROWTH_MB = 10.0


def rss_mb() -> float:
    """VmRSS of this process, MB (Linux /proc)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def soak(
    minutes: int,
    groups: int = 1,
    policy: str = "default",
    warmup: int | None = None,
    sample_every: int = 1000,
    journal_dir: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Run `minutes` ticks of `groups` simulated groups; return the figures (see the module docstring)."""
    import numpy as np
    from prometheus_client import CollectorRegistry

    from fleetpilot.controller.config import DaemonConfig
    from fleetpilot.controller.daemon import Daemon
    from fleetpilot.policies.registry import shipped_models

    if policy == "default" and "default" not in shipped_models():
        policy = "target-tracking"  # no shipped model in this installation: its fallback rule, as the daemon would
    warmup = min(minutes // 2, 10_000) if warmup is None else warmup
    tmp = tempfile.TemporaryDirectory() if journal_dir is None else None
    where = Path(journal_dir or tmp.name)
    cfg = DaemonConfig(
        interval_seconds=0.001,
        journal_path=where / "soak.sqlite",
        groups=[
            {
                "name": f"g{i}",
                "policy": policy,
                "fallback_policy": "target-tracking",
                "min_machines": 1,
                "max_machines": 833,
                "source": {"kind": "simulator", "seed": i},
                "backend": {"kind": "simulated", "seed": i, "initial_machines": 50},
            }
            for i in range(groups)
        ],
    )
    registry = CollectorRegistry()
    daemon = Daemon(cfg, registry)
    daemon.backfill()
    samples: list[tuple[int, float]] = [(0, rss_mb())]
    durations = np.empty(minutes)
    outcomes: dict[str, int] = {}
    t_start = time.perf_counter()
    try:
        for k in range(minutes):
            t0 = time.perf_counter()
            outcome = daemon.run_tick()
            durations[k] = time.perf_counter() - t0
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if (k + 1) % sample_every == 0 or k + 1 == warmup:
                gc.collect()
                samples.append((k + 1, rss_mb()))
                if progress:
                    print(f"  {k + 1:>7} minutes  rss {samples[-1][1]:7.1f} MB", file=sys.stderr, flush=True)
    finally:
        daemon.close()
    wall = time.perf_counter() - t_start

    def counter(name: str, **labels) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    decisions = sum(
        s.value
        for m in registry.collect()
        if m.name == "fleetpilot_decisions"
        for s in m.samples
        if s.name == "fleetpilot_decisions_total"
    )
    db = sqlite3.connect(where / "soak.sqlite")
    rows = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    db.close()
    journal_mb = (where / "soak.sqlite").stat().st_size / 2**20
    if tmp is not None:
        tmp.cleanup()
    at_warmup = next(mb for k, mb in samples if k >= warmup)
    after = [mb for k, mb in samples if k >= warmup]
    return {
        "minutes": minutes,
        "groups": groups,
        "policy": policy,
        "policy_kind": type(daemon.batches[0].policy).__name__ if daemon.batches[0].policy else "fallback only",
        "wall_seconds": round(wall, 1),
        "tick_p50_ms": round(float(np.median(durations)) * 1e3, 3),
        "tick_mean_ms": round(float(durations.mean()) * 1e3, 3),
        "tick_p99_ms": round(float(np.percentile(durations, 99)) * 1e3, 3),
        "ticks": outcomes,
        "error_ticks": int(counter("fleetpilot_ticks_total", outcome="error")),
        "partial_ticks": int(counter("fleetpilot_ticks_total", outcome="partial")),
        "decisions": int(decisions),
        "journal_rows": int(rows),
        "journal_integrity": integrity,
        "journal_mb": round(journal_mb, 1),
        "rss_start_mb": round(samples[0][1], 1),
        "rss_at_warmup_mb": round(at_warmup, 1),
        "rss_end_mb": round(samples[-1][1], 1),
        "rss_max_after_warmup_mb": round(max(after), 1),
        "rss_growth_after_warmup_mb": round(max(after) - at_warmup, 1),
        "warmup_minutes": warmup,
        "rss_samples": samples,
    }


def check(r: dict) -> list[str]:
    """The targets of issue 6 that `r` misses (empty when all are met)."""
    bad = []
    if r["error_ticks"]:
        bad.append(f"{r['error_ticks']} error ticks (want 0)")
    if not (r["journal_rows"] == r["decisions"] == r["minutes"] * r["groups"]):
        bad.append(
            f"journal rows {r['journal_rows']}, decisions {r['decisions']}, ticks x groups "
            f"{r['minutes'] * r['groups']} differ"
        )
    if r["journal_integrity"] != "ok":
        bad.append(f"journal integrity: {r['journal_integrity']}")
    if r["rss_growth_after_warmup_mb"] > MAX_GROWTH_MB:
        bad.append(
            f"resident memory grew {r['rss_growth_after_warmup_mb']} MB after the warm-up (at most {MAX_GROWTH_MB:g})"
        )
    return bad


def flat(r: dict, bad: list[str]) -> dict:
    """The figures of `soak` as one flat object: tick outcomes as ticks_<outcome>, no memory samples."""
    figures = {k: v for k, v in r.items() if k not in ("ticks", "rss_samples")}
    figures.update({f"ticks_{outcome}": n for outcome, n in sorted(r["ticks"].items())})
    return {**figures, "ok": not bad}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=int, default=100_000)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument(
        "--policy",
        default="default",
        help="default (the shipped model; target-tracking until it ships), a rule or a model directory",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="ticks before memory growth is measured (default: min(minutes/2, 10000))",
    )
    ap.add_argument("--sample-every", type=int, default=1000)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as one flat JSON object")
    args = ap.parse_args(argv)
    import logging

    from fleetpilot.controller.logs import setup_logging

    setup_logging("WARNING")  # the soak's own output is the figures
    logging.getLogger("fleetpilot").setLevel(logging.WARNING)
    r = soak(args.minutes, args.groups, args.policy, args.warmup, args.sample_every, progress=True)
    bad = check(r)
    if args.json:
        Path(args.json).write_text(json.dumps(flat(r, bad), indent=2) + "\n")
    print(
        f"soak: {r['minutes']:,} simulated minutes x {r['groups']} group(s), policy {r['policy']} "
        f"({r['policy_kind']}), {r['wall_seconds']} s wall"
    )
    print(f"  ticks: {r['ticks']}  error ticks: {r['error_ticks']}  partial: {r['partial_ticks']}")
    print(f"  tick time: median {r['tick_p50_ms']} ms, mean {r['tick_mean_ms']} ms, p99 {r['tick_p99_ms']} ms")
    print(
        f"  journal rows {r['journal_rows']:,} = decisions {r['decisions']:,} "
        f"(integrity {r['journal_integrity']}, {r['journal_mb']} MB)"
    )
    print(
        f"  resident memory: start {r['rss_start_mb']} MB, after {r['warmup_minutes']:,}-minute warm-up "
        f"{r['rss_at_warmup_mb']} MB, end {r['rss_end_mb']} MB, max after warm-up "
        f"{r['rss_max_after_warmup_mb']} MB: growth {r['rss_growth_after_warmup_mb']} MB "
        f"(limit {MAX_GROWTH_MB:g})"
    )
    print("  " + ("OK" if not bad else "FAILED: " + "; ".join(bad)))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
