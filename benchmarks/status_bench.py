"""Status page against the bars of issue 14 (a measurement, not a test): 100 simulated groups with a day of
history each (1,440 ticks of a real daemon), then

(a) the page `/` over HTTP from the daemon's server: median and max of several loads (server render and
    transfer), its size; the JSON twin `/api/groups` likewise;
(b) the page in headless chromium: `data-rendered-ms`, the time from navigation start until the page's script
    has drawn every chart (fetch, parse, layout, script), when chromium is installed;
(c) the daemon's resident memory with the status board against the same daemon whose board records nothing
    (two fresh processes, same ticks, same page loads): the difference is what the page adds.

    .venv/bin/python benchmarks/status_bench.py [--groups 100] [--minutes 1440] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TARGET_PAGE_MS = 200.0
TARGET_MEMORY_MB = 5.0


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _get(url: str) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return (time.perf_counter() - t) * 1000, len(body)


def _chromium(url: str) -> dict[str, float] | None:
    exe = shutil.which("chromium")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--window-size=1280,1600",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    body = re.search(r"<body[^>]*>", p.stdout)
    if body is None:
        return None
    got = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(0)))
    return {k: float(v) for k, v in got.items()} or None


def child(groups: int, minutes: int, board: bool, loads: int, browser: bool) -> dict:
    """One daemon process: `minutes` ticks of `groups` groups, then page loads; its resident memory."""
    from prometheus_client import CollectorRegistry

    from fleetpilot.controller.config import DaemonConfig
    from fleetpilot.controller.daemon import Daemon
    from fleetpilot.controller.server import StatusServer
    from fleetpilot.controller.status_page import pages

    tmp = Path(tempfile.mkdtemp(prefix="fp-status-bench-"))
    cfg = DaemonConfig(
        interval_seconds=0.05,
        journal_path=tmp / "journal.sqlite",
        groups=[
            {
                "name": f"group-{i:03d}",
                "policy": "target-tracking",
                "source": {"kind": "simulator", "seed": i, "minutes": 2880},
                "backend": {"kind": "simulated", "seed": i},
            }
            for i in range(groups)
        ],
    )
    d = Daemon(cfg, CollectorRegistry())
    if not board:  # the same daemon, its board recording nothing (its arrays released)
        from fleetpilot.controller.status import StatusBoard

        d.status = StatusBoard([])
        d.status.record = lambda *a, **k: None  # type: ignore[method-assign]
    d.backfill()
    t0 = time.perf_counter()
    for _ in range(minutes):
        d.run_tick()
    ticks_s = time.perf_counter() - t0
    rss_ticks = _rss_mb()
    srv = StatusServer("127.0.0.1", 0, d.registry, d.healthz, d.readyz, pages=pages(d.status))
    srv.start()
    base = f"http://127.0.0.1:{srv.address[1]}"
    page_ms, page_bytes, api_ms, api_bytes = [], 0, [], 0
    for _ in range(loads):
        ms, page_bytes = _get(base + "/")
        page_ms.append(ms)
        ms, api_bytes = _get(base + "/api/groups")
        api_ms.append(ms)
    views = [x for x in (_chromium(base + "/") for _ in range(5 if browser else 0)) if x is not None]
    rss = _rss_mb()
    srv.stop()
    d.close()
    return {
        "board": board,
        "rss_mb": rss,
        "ticks": minutes,
        "tick_mean_ms": ticks_s / minutes * 1000,
        "page_ms_median": statistics.median(page_ms),
        "page_ms_max": max(page_ms),
        "page_bytes": page_bytes,
        "api_ms_median": statistics.median(api_ms),
        "api_bytes": api_bytes,
        "rss_after_ticks_mb": rss_ticks,
        "browser": views,
        "browser_ms": [v["rendered-ms"] for v in views if "rendered-ms" in v],
        "board_ring_bytes": d.status.nbytes() if board else 0,
    }


def run_child(groups: int, minutes: int, board: bool, loads: int, browser: bool) -> dict:
    p = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps([groups, minutes, board, loads, browser])],
        capture_output=True,
        text=True,
        check=False,
    )
    if p.returncode != 0:
        raise SystemExit(f"benchmark child failed: {p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--minutes", type=int, default=1440, help="ticks (simulated minutes) of history")
    ap.add_argument("--loads", type=int, default=20, help="page loads measured")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return 0
    with_board = run_child(args.groups, args.minutes, True, args.loads, True)
    without = run_child(args.groups, args.minutes, False, args.loads, False)
    delta = with_board["rss_mb"] - without["rss_mb"]
    delta_ticks = with_board["rss_after_ticks_mb"] - without["rss_after_ticks_mb"]
    browser = with_board["browser_ms"]
    rows = [
        (
            f"(a) GET / for {args.groups} groups, {args.minutes} min each (median of {args.loads})",
            f"{with_board['page_ms_median']:.0f} ms (max {with_board['page_ms_max']:.0f})",
            f"< {TARGET_PAGE_MS:.0f} ms",
            with_board["page_ms_max"] < TARGET_PAGE_MS,
        ),
        (
            "(b) page in chromium: navigation start to the first screen's charts drawn (median of 5)",
            f"{statistics.median(browser):.0f} ms" if browser else "no chromium",
            f"< {TARGET_PAGE_MS:.0f} ms",
            bool(browser) and statistics.median(browser) < TARGET_PAGE_MS,
        ),
        (
            "(c) resident memory the status board adds",
            f"{delta:.1f} MB ({with_board['rss_mb']:.1f} vs {without['rss_mb']:.1f})",
            f"< {TARGET_MEMORY_MB:.0f} MB",
            delta < TARGET_MEMORY_MB,
        ),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(w)}  {'measured':>24}  {'target':>8}  ok")
    for name, got, target, ok in rows:
        print(f"{name.ljust(w)}  {got:>24}  {target:>8}  {'yes' if ok else 'NO'}")
    print(
        f"page {with_board['page_bytes'] / 1e6:.2f} MB; /api/groups {with_board['api_bytes'] / 1e6:.2f} MB in "
        f"{with_board['api_ms_median']:.0f} ms; rings {with_board['board_ring_bytes'] / 1e6:.2f} MB; mean tick "
        f"{with_board['tick_mean_ms']:.1f} ms with the board, {without['tick_mean_ms']:.1f} ms without"
    )
    print(f"resident memory the board adds after the ticks, before any page load: {delta_ticks:.1f} MB")
    if browser:
        parts = {
            k: statistics.median([b[k] for b in with_board["browser"] if k in b]) for k in with_board["browser"][0]
        }
        print(
            "chromium (medians, ms from navigation start): response end {:.0f}, charts drawn {:.0f} "
            "(script {:.0f}); {:.0f} of {:.0f} charts drawn at once, the rest as they scroll into view; "
            "min {:.0f}".format(
                parts.get("response-end-ms", float("nan")),
                parts.get("rendered-ms", float("nan")),
                parts.get("script-ms", float("nan")),
                parts.get("charts-drawn", float("nan")),
                parts.get("charts", float("nan")),
                min(browser),
            )
        )
    if args.json:
        figures = {
            "groups": args.groups,
            "minutes": args.minutes,
            "page_ms_p50": with_board["page_ms_median"],
            "page_ms_max": with_board["page_ms_max"],
            "page_bytes": with_board["page_bytes"],
            "api_ms_p50": with_board["api_ms_median"],
            "browser_ms_p50": statistics.median(browser) if browser else None,
            "tick_ms_mean_with_board": with_board["tick_mean_ms"],
            "tick_ms_mean_without_board": without["tick_mean_ms"],
            "rss_mb_with_board": with_board["rss_mb"],
            "rss_mb_without_board": without["rss_mb"],
            "memory_delta_mb": delta,
            "memory_delta_after_ticks_mb": delta_ticks,
            "target_page_ms": TARGET_PAGE_MS,
            "target_memory_mb": TARGET_MEMORY_MB,
            "ok": all(r[3] for r in rows),
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
