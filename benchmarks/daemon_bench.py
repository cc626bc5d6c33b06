"""Daemon performance against the targets of issue 4 (a side-by-side print, not a test).

(a) `fleetpilot run --once` for one simulated group in a fresh process: start-to-first-decision time (from
    spawning the process until its "first decision" log line), resident memory after the decision (VmRSS and
    its peak VmHWM), and whether torch was imported or libtorch mapped;
(b) ticks of N simulated groups sharing one policy (one batched decide) for each N of `--groups`, each group
    first fed `--history-minutes` of its load (default a day: the steady state, where the shipped `default`'s
    `newsvendor` rise tails are warm and priced; with 0 none is), each N in a
    fresh process (so its resident memory is its own): p50 / p99 / max tick seconds, setup seconds, resident
    memory after the ticks (VmRSS) and its peak over the whole process, imports, setup and ticks included
    (VmHWM), side by side, and the size of the files the daemon keeps its history and status rings in (in the
    page cache, not resident: policies.rowstore); then the peak one /metrics exposition reaches (`scrape MB`,
    from the resident memory after the ticks; not part of the targets: Prometheus scrapes every 15-60 s, and
    the exposition of 10,000 groups is about 12 MB of text). Targets (issue 13): 10,000 groups in <= 1 s a tick (p50) and
    <= 300 MB resident, after the ticks and at the peak;
(c) with `--shadow default,target-tracking`: (b) again for each N with every group shadowed by those policies,
    the tick and the shadows' own time inside it, against the bar of issue 14 (shadows add < 20%);
(d) with `--backfill N`: the daemon's start-up backfill of a week of history (`HISTORY_MINUTES`) for N simulated
    groups, on a clock two weeks after their load starts, in a fresh process: seconds and the peak resident memory
    it reaches, against the same 300 MB bar.

    .venv/bin/python benchmarks/daemon_bench.py [--policy default] [--groups 1,1000,10000] [--ticks 20]
        [--history-minutes 1440] [--shadow default,target-tracking] [--backfill N] [--json PATH] [--skip-once]

`--json PATH` writes one flat object: the (a) figures, and per N `g<N>_tick_seconds_p50` (p99, max),
`g<N>_rss_mb`, `g<N>_hwm_mb`, `g<N>_files_mb`, `g<N>_setup_seconds`, `g<N>_history_minutes`,
`g<N>_warm_tail_share` (the share of groups whose rise tail is warm enough to price) and, with shadows, `g<N>_shadow_tick_seconds_p50` and
`g<N>_shadow_own_seconds_p50`; with `--backfill N`, `backfill_groups`, `backfill_seconds`, `backfill_hwm_mb`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET_RSS_MB = 120.0
TARGET_FIRST_DECISION_S = 2.0
TARGET_TICK_1000_S = 1.0
TARGET_TICK_10000_S = 1.0
TARGET_RSS_10000_MB = 300.0
TARGET_SHADOW_OVERHEAD = 0.20

_CHILD = """
import json, sys
from fleetpilot.controller.cli import main
rc = main(['run', '--config', sys.argv[1], '--once', '--quiet'])
status = dict(line.split(':', 1) for line in open('/proc/self/status') if ':' in line)
mb = lambda k: int(status[k].split()[0]) / 1024
print(json.dumps({'rc': rc, 'rss_mb': mb('VmRSS'), 'hwm_mb': mb('VmHWM'),
                  'torch': 'torch' in sys.modules, 'libtorch': 'libtorch' in open('/proc/self/maps').read(),
                  'onnxruntime': 'onnxruntime' in sys.modules}))
"""


def one_group_once(tmp: Path, policy: str, repeats: int) -> dict:
    cfg = tmp / "one.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "interval_seconds": 0.05,
                "journal_path": str(tmp / "one.sqlite"),
                "groups": [
                    {
                        "name": "web",
                        "policy": policy,
                        "source": {"kind": "simulator", "seed": 0},
                        "backend": {"kind": "simulated", "seed": 0},
                    }
                ],
            }
        )
    )
    firsts, reports = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        first = None
        for line in p.stderr:
            if first is None and '"first decision"' in line:
                first = time.perf_counter() - t0
        out, _ = p.communicate()
        if p.returncode != 0 or first is None:
            raise SystemExit(f"fleetpilot run --once failed (exit {p.returncode})")
        firsts.append(first)
        reports.append(json.loads(out.strip().splitlines()[-1]))
    r = reports[-1]
    return {
        "first_decision_s": statistics.median(firsts),
        "first_decision_max_s": max(firsts),
        "rss_mb": max(x["rss_mb"] for x in reports),
        "hwm_mb": max(x["hwm_mb"] for x in reports),
        "torch": any(x["torch"] or x["libtorch"] for x in reports),
        "onnxruntime": r["onnxruntime"],
    }


def simulated_config(journal: Path, policy: str, groups: int, shadows: list[str] | None = None):
    """The daemon config of (b) and (d): `groups` simulated groups of `policy`, each shadowed by `shadows`."""
    from fleetpilot.controller.config import DaemonConfig

    return DaemonConfig(
        interval_seconds=0.05,
        journal_path=journal,
        groups=[
            {
                "name": f"g{i}",
                "policy": policy,
                "source": {"kind": "simulator", "seed": i, "minutes": 1440},
                "backend": {"kind": "simulated", "seed": i},
                **({"shadow_policies": shadows} if shadows else {}),
            }
            for i in range(groups)
        ],
    )


def many_groups_tick(
    tmp: Path, policy: str, groups: int, ticks: int, shadows: list[str] | None = None, history: int = 0
) -> dict:
    """In this process: `ticks` ticks (after a warm-up tick) of `groups` simulated groups (each shadowed by
    `shadows`, whose own time inside each tick is measured too), each group with `history` minutes of its load
    fed first (`feed_history`)."""
    from prometheus_client import CollectorRegistry

    from fleetpilot.controller.daemon import Daemon

    cfg = simulated_config(tmp / "many.sqlite", policy, groups, shadows)
    t0 = time.perf_counter()
    d = Daemon(cfg, CollectorRegistry())
    d.backfill()
    setup = time.perf_counter() - t0
    feed_history(d, history)
    assert len(d.batches) == 1, "the groups should share one batch"
    in_shadows: list[float] = []
    if shadows:
        inner = d.shadows.tick

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                in_shadows.append(time.perf_counter() - t)

        d.shadows.tick = timed  # type: ignore[method-assign]
    d.run_tick()  # warm-up (first tick)
    times = []
    for _ in range(ticks):
        t = time.perf_counter()
        outcome = d.run_tick()
        times.append(time.perf_counter() - t)
        assert outcome in ("ok", "partial"), outcome
    # the inference histogram alone (a registry-wide read is a scrape, measured below on its own)
    inf = {s.name: s.value for family in d.metrics.inference.collect() for s in family.samples}
    calls = inf.get("fleetpilot_inference_seconds_count", 0.0)
    inference = inf["fleetpilot_inference_seconds_sum"] / calls if calls else float("nan")
    status = _proc_status()
    files = sum(b.builder.store.array.nbytes for b in d.batches if b.builder.store.in_file) + d.status.nbytes()
    # one /metrics scrape (the exposition the server sends): the peak it reaches, from the resident memory now
    scrape_peak = float("nan")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        from prometheus_client import generate_latest

        t = time.perf_counter()
        body = generate_latest(d.registry)
        scrape_s = time.perf_counter() - t
        scrape_peak = int(_proc_status()["VmHWM"].split()[0]) / 1024
    except OSError:  # no clear_refs (an old kernel, a restricted /proc): no scrape figure
        body, scrape_s = b"", float("nan")
    d.close()
    ordered = sorted(times)
    return {
        "groups": groups,
        "ticks": ticks,
        "tick_p50_s": statistics.median(times),
        "tick_p99_s": ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)],
        "tick_max_s": max(times),
        "setup_s": setup,
        "inference_mean_s": inference,
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "hwm_mb": int(status["VmHWM"].split()[0]) / 1024,
        "files_mb": files / 2**20,
        "scrape_peak_mb": scrape_peak,
        "scrape_s": scrape_s,
        "metrics_mb": len(body) / 2**20,
        "shadows_p50_s": statistics.median(in_shadows[-ticks:]) if in_shadows else None,
        "history_minutes": history,
        "warm_tail_share": warm_tail_share(d),
        "policy": type(d.batches[0].policy).__name__
        if d.batches[0].policy is not None
        else f"fallback ({d.batches[0].policy_error})",
    }


def backfill(tmp: Path, policy: str, groups: int) -> dict:
    """In this process: a daemon of `groups` simulated groups whose clock is two weeks after their load starts
    backfills a week of history from them at start (`Daemon.backfill`, as from any source with history)."""
    from prometheus_client import CollectorRegistry

    from fleetpilot.controller.clock import SimulatedClock
    from fleetpilot.controller.daemon import Daemon
    from fleetpilot.controller.sources.simulator import SYNTHETIC_START_MINUTE

    cfg = simulated_config(tmp / "backfill.sqlite", policy, groups)
    d = Daemon(cfg, CollectorRegistry(), clock=SimulatedClock(SYNTHETIC_START_MINUTE + 2 * 10_080))
    t = time.perf_counter()
    d.backfill()
    seconds = time.perf_counter() - t
    fed = int(sum(int(b.builder.count.sum()) for b in d.batches))
    d.close()
    return {"groups": groups, "seconds": seconds, "hwm_mb": int(_proc_status()["VmHWM"].split()[0]) / 1024, "fed": fed}


def feed_history(d, minutes: int) -> None:
    """Feed every batch the `minutes` minutes of its groups' simulated load before the daemon's first tick (the
    minutes now - 1 - `minutes` .. now - 2; the first tick reads now - 1): the simulator's clock starts where its
    load starts, so without this every group is ticked with no past (and a `newsvendor` rise tail is still cold:
    nothing is priced). Not the daemon's backfill path (`--backfill` times that): the loads come straight from
    the arrays the sources replay, wrapped around their loop (the source itself has nothing before its start),
    a block of minutes at a time into the builder, with no per-minute Python objects."""
    if minutes <= 0:
        return
    now = int(d.clock.now_seconds() // 60)
    for b in d.batches:
        loads = [g.source.load_tpm for g in b.groups]
        starts = np.array([g.source.start_minute for g in b.groups])
        n = len(b.groups)
        zeros = np.zeros(n, dtype=np.int64)
        every = np.ones(n, dtype=bool)
        for lo in range(now - 1 - minutes, now - 1, 60):
            block = np.arange(lo, min(lo + 60, now - 1))
            mat = np.stack([x[(block - s) % x.size] for x, s in zip(loads, starts, strict=True)]).astype(np.float64)
            for j, m in enumerate(block):
                b.builder.update_where(every, mat[:, j], zeros, zeros, np.full(n, m))


def warm_tail_share(d) -> float:
    """The share of groups whose `newsvendor` rise tail is warm enough to be priced (0 when none has one). The
    shipped `default` prices the warm rows whose action is a `newsvendor` one; a rule that reads no tail none."""
    from fleetpilot.policies.newsvendor import MIN_MINUTES

    warm = [b.builder.rise.mass >= MIN_MINUTES for b in d.batches if b.builder.rise is not None]
    return float(np.concatenate(warm).sum()) / sum(len(b.groups) for b in d.batches)


def _proc_status() -> dict[str, str]:
    return dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)


def many_groups_in_child(
    policy: str, groups: int, ticks: int, shadows: list[str] | None = None, history: int = 0
) -> dict:
    """`many_groups_tick` in a fresh process: its memory figures are its own."""
    extra = ["--shadow", ",".join(shadows)] if shadows else []
    extra += ["--history-minutes", str(history)]
    p = subprocess.run(
        [sys.executable, __file__, "--child", str(groups), "--policy", policy, "--ticks", str(ticks), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if p.returncode != 0:
        raise SystemExit(f"the {groups}-group run failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def backfill_in_child(policy: str, groups: int) -> dict:
    """`backfill` in a fresh process: its peak memory is its own."""
    p = subprocess.run(
        [sys.executable, __file__, "--backfill-child", str(groups), "--policy", policy],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if p.returncode != 0:
        raise SystemExit(f"the {groups}-group backfill failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if out["fed"] <= 0:
        raise SystemExit(f"the {groups}-group backfill fed no history")
    return out


def flat_figures(policy: str, a: dict | None, runs: list[dict], shadowed: list[dict], rows: list) -> dict:
    """One flat JSON object: (a)'s figures, then per N `g<N>_...` (see the module docstring)."""
    out: dict = {"policy": policy, "groups": ",".join(str(b["groups"]) for b in runs)}
    if a is not None:
        out.update(
            first_decision_seconds_p50=a["first_decision_s"],
            first_decision_seconds_max=a["first_decision_max_s"],
            rss_mb=a["rss_mb"],
            hwm_mb=a["hwm_mb"],
            torch_in_process=a["torch"],
        )
    for b in runs:
        n = b["groups"]
        out.update(
            {
                f"g{n}_tick_seconds_p50": b["tick_p50_s"],
                f"g{n}_tick_seconds_p99": b["tick_p99_s"],
                f"g{n}_tick_seconds_max": b["tick_max_s"],
                f"g{n}_setup_seconds": b["setup_s"],
                f"g{n}_rss_mb": b["rss_mb"],
                f"g{n}_hwm_mb": b["hwm_mb"],
                f"g{n}_files_mb": b["files_mb"],
                f"g{n}_scrape_peak_mb": b["scrape_peak_mb"],
                f"g{n}_scrape_seconds": b["scrape_s"],
                f"g{n}_history_minutes": b["history_minutes"],
                f"g{n}_warm_tail_share": b["warm_tail_share"],
            }
        )
    for c in shadowed:
        out[f"g{c['groups']}_shadow_tick_seconds_p50"] = c["tick_p50_s"]
        out[f"g{c['groups']}_shadow_own_seconds_p50"] = c["shadows_p50_s"]
    out["targets_met"] = all(r[3] for r in rows)
    return out


def _groups(text: str) -> list[int]:
    try:
        ns = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--groups: expected numbers separated by commas, got {text!r}") from None
    if not ns or any(n < 1 for n in ns):
        raise argparse.ArgumentTypeError(f"--groups: expected numbers >= 1, got {text!r}")
    return ns


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="default", help="policy of the groups (default: the shipped model)")
    ap.add_argument("--groups", type=_groups, default=[1, 1000, 10000], help="N, or N1,N2,... (default 1,1000,10000)")
    ap.add_argument("--ticks", type=int, default=20, help="timed ticks per N, after one warm-up tick")
    ap.add_argument("--repeats", type=int, default=3, help="runs of (a); the median first-decision time")
    ap.add_argument("--json", type=Path, help="also write the figures as one flat JSON object")
    ap.add_argument("--skip-once", action="store_true", help="skip (a), the one-group start-up measure")
    ap.add_argument(
        "--shadow",
        nargs="?",
        const="default,target-tracking",
        default=None,
        help="also time (b) with these shadow policies on every group (comma-separated; "
        "default default,target-tracking)",
    )
    ap.add_argument(
        "--history-minutes",
        type=int,
        default=1440,
        help="minutes of each group's load fed before the first tick, as a backfill would (default 1440: a day, "
        "so the ticks are of groups in their steady state; 0: groups with no past)",
    )
    ap.add_argument("--backfill", type=int, default=0, metavar="N", help="(d): time the start-up backfill of N groups")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--backfill-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shadows = [s for s in (args.shadow or "").split(",") if s]
    if args.backfill_child is not None:
        with tempfile.TemporaryDirectory() as td:
            print(json.dumps(backfill(Path(td), args.policy, args.backfill_child)))
        return 0
    if args.child is not None:
        with tempfile.TemporaryDirectory() as td:
            print(
                json.dumps(
                    many_groups_tick(Path(td), args.policy, args.child, args.ticks, shadows, args.history_minutes)
                )
            )
        return 0
    a = None
    if not args.skip_once:
        with tempfile.TemporaryDirectory() as td:
            a = one_group_once(Path(td), args.policy, args.repeats)
    h = args.history_minutes
    runs = [many_groups_in_child(args.policy, n, args.ticks, history=h) for n in args.groups]
    shadowed = [many_groups_in_child(args.policy, n, args.ticks, shadows, h) for n in args.groups] if shadows else []
    filled = backfill_in_child(args.policy, args.backfill) if args.backfill > 0 else None
    rows = []
    if a is not None:
        rows += [
            (
                "(a) resident memory after the first decision (VmRSS)",
                f"{a['rss_mb']:.0f} MB",
                f"<= {TARGET_RSS_MB:.0f} MB",
                a["rss_mb"] <= TARGET_RSS_MB,
            ),
            (
                "(a) peak resident memory (VmHWM)",
                f"{a['hwm_mb']:.0f} MB",
                f"<= {TARGET_RSS_MB:.0f} MB",
                a["hwm_mb"] <= TARGET_RSS_MB,
            ),
            (
                "(a) start to first decision (median)",
                f"{a['first_decision_s']:.2f} s (max {a['first_decision_max_s']:.2f})",
                f"<= {TARGET_FIRST_DECISION_S:.0f} s",
                a["first_decision_s"] <= TARGET_FIRST_DECISION_S,
            ),
            ("(a) torch in the process", "yes" if a["torch"] else "no", "no", not a["torch"]),
        ]
    for b in runs:
        if b["groups"] == 1000:
            rows.append(
                (
                    "(b) one tick, 1000 groups (p50)",
                    f"{b['tick_p50_s'] * 1000:.0f} ms",
                    f"<= {TARGET_TICK_1000_S * 1000:.0f} ms",
                    b["tick_p50_s"] <= TARGET_TICK_1000_S,
                )
            )
        if b["groups"] == 10000:
            rows += [
                (
                    "(b) one tick, 10000 groups (p50)",
                    f"{b['tick_p50_s'] * 1000:.0f} ms",
                    f"<= {TARGET_TICK_10000_S * 1000:.0f} ms",
                    b["tick_p50_s"] <= TARGET_TICK_10000_S,
                ),
                (
                    "(b) resident memory, 10000 groups (VmRSS)",
                    f"{b['rss_mb']:.0f} MB",
                    f"<= {TARGET_RSS_10000_MB:.0f} MB",
                    b["rss_mb"] <= TARGET_RSS_10000_MB,
                ),
                (
                    "(b) peak resident memory, 10000 groups (VmHWM)",
                    f"{b['hwm_mb']:.0f} MB",
                    f"<= {TARGET_RSS_10000_MB:.0f} MB",
                    b["hwm_mb"] <= TARGET_RSS_10000_MB,
                ),
            ]
    if a is not None:
        print(f"policy {args.policy}; onnxruntime loaded in (a): {a['onnxruntime']}")
    warm = ", ".join(f"{b['warm_tail_share']:.2f}" for b in runs)
    print(
        f"(b) {args.ticks} ticks per N after a warm-up tick, policy {runs[0]['policy']}, each N in its own process,"
        f" {h} minutes of history fed first (share of groups with a warm rise tail: {warm})"
    )
    head = (
        "groups",
        "p50 ms",
        "p99 ms",
        "max ms",
        "decide ms",
        "setup s",
        "RSS MB",
        "peak MB",
        "files MB",
        "scrape MB",
    )
    print("  ".join(f"{h:>9}" for h in head))
    for b in runs:
        cells = (
            b["groups"],
            f"{b['tick_p50_s'] * 1000:.1f}",
            f"{b['tick_p99_s'] * 1000:.1f}",
            f"{b['tick_max_s'] * 1000:.1f}",
            f"{b['inference_mean_s'] * 1000:.2f}",
            f"{b['setup_s']:.2f}",
            f"{b['rss_mb']:.0f}",
            f"{b['hwm_mb']:.0f}",
            f"{b['files_mb']:.0f}",
            f"{b['scrape_peak_mb']:.0f}",
        )
        print("  ".join(f"{c:>9}" for c in cells))
    for b, c in zip(runs, shadowed, strict=False):
        own = c["shadows_p50_s"] / b["tick_p50_s"]
        rows.append(
            (
                f"(c) shadows' own time in a tick, {b['groups']} groups (p50; tick {c['tick_p50_s'] * 1000:.0f} ms "
                f"vs {b['tick_p50_s'] * 1000:.0f} ms)",
                f"{c['shadows_p50_s'] * 1000:.1f} ms (+{own * 100:.1f}%)",
                f"< +{TARGET_SHADOW_OVERHEAD * 100:.0f}%",
                own < TARGET_SHADOW_OVERHEAD,
            )
        )
    if filled is not None:
        rows.append(
            (
                f"(d) start-up backfill of a week, {filled['groups']} groups: peak resident memory"
                f" ({filled['seconds']:.1f} s)",
                f"{filled['hwm_mb']:.0f} MB",
                f"<= {TARGET_RSS_10000_MB:.0f} MB",
                filled["hwm_mb"] <= TARGET_RSS_10000_MB,
            )
        )
    if rows:
        w = max(len(r[0]) for r in rows)
        print(f"{'measure'.ljust(w)}  {'measured':>22}  {'target':>10}  ok")
        for name, got, target, ok in rows:
            print(f"{name.ljust(w)}  {got:>22}  {target:>10}  {'yes' if ok else 'NO'}")
    if args.json is not None:
        figures = flat_figures(args.policy, a, runs, shadowed, rows)
        if filled is not None:
            figures.update(
                backfill_groups=filled["groups"], backfill_seconds=filled["seconds"], backfill_hwm_mb=filled["hwm_mb"]
            )
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
