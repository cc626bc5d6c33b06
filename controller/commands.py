"""Daemon subcommands: `run`, `config check`, `decisions`.

fleetpilot run --config FILE [--dry-run] [--once] [--quiet]
fleetpilot config check FILE
fleetpilot decisions [--config FILE | --journal PATH] [--group G] [--last N] [--json]
fleetpilot lease create-table --config FILE
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from datetime import UTC


def add_commands(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run the autoscaling daemon",
        description="Every tick: read the load, decide, guard, set the desired capacity.",
    )
    p.add_argument("--config", required=True, help="YAML config file (FLEETPILOT_ environment variables override)")
    p.add_argument("--dry-run", action="store_true", help="run everything but the backend write")
    p.add_argument("--once", action="store_true", help="run one tick and exit (exit 1 if the tick failed)")
    p.add_argument("--quiet", action="store_true", help="no per-tick summary on stdout (simulated clock)")
    p.set_defaults(func=cmd_run)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", required=True, parser_class=sub._parser_class)
    chk = csub.add_parser("check", help="validate a config file and print a one-line summary")
    chk.add_argument("file", help="YAML config file")
    chk.set_defaults(func=cmd_config_check)

    d = sub.add_parser("decisions", help="show the decision journal")
    src = d.add_mutually_exclusive_group()
    src.add_argument("--config", help="config file (its journal_path, else the default location, is read)")
    src.add_argument("--journal", help="journal SQLite file (default: the state directory's journal.sqlite)")
    d.add_argument("--group", help="only this group")
    d.add_argument("--last", type=int, default=20, help="number of decisions (default 20)")
    d.add_argument("--json", action="store_true", help="one JSON object per line")
    d.set_defaults(func=cmd_decisions)

    from fleetpilot.controller.lease import add_commands as add_lease_commands

    add_lease_commands(sub)


def cmd_config_check(args: argparse.Namespace) -> int:
    from fleetpilot.controller.config import advisories, check_runnable, load_config, summary

    cfg = load_config(args.file)
    check_runnable(cfg, args.file)
    print(f"OK {args.file}: {summary(cfg)}")
    for note in advisories(cfg):
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fleetpilot.controller.config import ConfigError, advisories, check_runnable, load_config
    from fleetpilot.controller.journal import Journal, JournalError
    from fleetpilot.policies.errors import CliError

    t_start = time.perf_counter()
    cfg = load_config(args.config)
    check_runnable(cfg, args.config)
    try:  # one writer per journal: taken before anything is logged, so a second daemon is refused in one line
        journal = Journal(cfg.journal_path)
    except JournalError as exc:
        raise ConfigError(f"{args.config}: {exc}") from None
    from fleetpilot.controller.logs import setup_logging

    setup_logging(cfg.log_level)
    log = logging.getLogger("fleetpilot.run")
    from fleetpilot.controller.daemon import Daemon, log_config, run_forever
    from fleetpilot.controller.runtime import TickOutcome
    from fleetpilot.controller.server import StatusServer
    from fleetpilot.controller.status_page import pages as status_pages

    stop = threading.Event()
    running: list = []  # the daemon, once made

    def on_signal(signum, frame):  # finish the current tick, then exit 0
        log.info("signal received; finishing the current tick", extra={"signal": signal.Signals(signum).name})
        stop.set()
        for d in running:
            d.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cfg = cfg.with_dry_run(args.dry_run)
    log_config(cfg)
    for note in advisories(cfg):
        log.warning(note)
    try:
        daemon = Daemon(cfg, summary=cfg.simulated_clock and not args.quiet, journal=journal)
    except BaseException:
        journal.close()
        raise
    running.append(daemon)
    server = None
    try:
        if not args.once:
            try:
                server = StatusServer(
                    cfg.server.host,
                    cfg.server.port,
                    daemon.registry,
                    daemon.healthz,
                    daemon.readyz,
                    pages=status_pages(daemon.status),
                )
            except OSError as exc:
                raise CliError(
                    f"server: cannot listen on {cfg.server.host}:{cfg.server.port}: {exc.strerror or exc}"
                ) from None
            server.start()
            host, port = server.address
            log.info(
                "serving /metrics, /healthz, /readyz, / (status page), /api/groups",
                extra={"host": host, "port": port},
            )
        if daemon.lease is not None:  # a lease table that does not exist: one line, exit 2
            daemon.lease.check_table()
            daemon.lease.start()
        daemon.backfill()
        if args.once:
            outcome = daemon.run_tick()
            log.info(
                "first decision",
                extra={"seconds_since_start": round(time.perf_counter() - t_start, 3), "outcome": outcome},
            )
            return 1 if outcome == TickOutcome.ERROR else 0
        run_forever(daemon, stop)
        log.info("stopped", extra={"ticks": daemon.tick_no})
        return 0
    finally:
        if server is not None:
            server.stop()
        daemon.close()
        logging.shutdown()


def cmd_decisions(args: argparse.Namespace) -> int:
    from fleetpilot.controller.journal import read_decisions
    from fleetpilot.policies.errors import CliError

    if args.last < 1:
        raise CliError("--last must be at least 1")
    if args.config:
        from fleetpilot.controller.config import load_config

        path = load_config(args.config).journal_path
    elif args.journal is not None:
        path = args.journal
    else:  # the same default as a config without journal_path
        from fleetpilot.controller.state import default_journal_path

        path = default_journal_path()
    try:
        rows = read_decisions(path, args.group, args.last)
    except FileNotFoundError:
        if args.config is None and args.journal is None:
            raise CliError(f"{path}: no journal at the default location (give --config or --journal)") from None
        raise CliError(f"{path}: no journal (has the daemon run with this journal_path?)") from None
    except Exception as exc:  # sqlite3.DatabaseError and friends: not a journal
        raise CliError(f"{path}: cannot read the journal: {exc}") from None
    if args.json:
        for r in rows:
            print(json.dumps(r, separators=(",", ":")))
        return 0
    cols = [
        ("id", "id"),
        ("minute", "minute"),
        ("group", "group_name"),
        ("load_tpm", "load_tpm"),
        ("active", "active"),
        ("warming", "warming"),
        ("before", "desired_before"),
        ("raw", "raw_action"),
        ("policy", "policy_desired"),
        ("action", "action"),
        ("final", "final"),
        ("outcome", "outcome"),
        ("guards", "guards"),
    ]
    if any(r.get("lease_token") is not None for r in rows):  # leader election: who decided, under which token
        cols += [("holder", "lease_holder"), ("token", "lease_token")]

    def cell(r, key):
        v = r.get(key)
        if key == "guards":
            return ",".join(v) or "-"
        if key == "load_tpm":
            return "-" if v is None else f"{v:.0f}"
        if key == "minute":
            from datetime import datetime

            return datetime.fromtimestamp(v * 60, tz=UTC).strftime("%Y-%m-%d %H:%M")
        return "-" if v is None else str(v)

    table = [[h for h, _ in cols]] + [[cell(r, k) for _, k in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    if not rows:
        print(f"(no decisions{' for group ' + args.group if args.group else ''} in {path})", file=sys.stderr)
    return 0
