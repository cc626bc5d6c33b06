"""The decision journal: one SQLite row per group and tick, written in WAL mode, committed every tick.

Each row explains a decision: the inputs (load and its minute, data status, active, warming, the group's
desired capacity), the policy's raw action and desired capacity, the guards that changed it, the final
capacity and what happened to it (written | dry-run | unchanged | held | paused | error).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
OUTCOMES = ("written", "dry-run", "unchanged", "held", "paused", "error")
_COLUMNS = (
    "wall_time",
    "tick",
    "minute",
    "group_name",
    "policy",
    "action",
    "data_status",
    "load_tpm",
    "load_minute",
    "active",
    "warming",
    "desired_before",
    "raw_action",
    "policy_desired",
    "fallback_desired",
    "recommendation",
    "guards",
    "final",
    "outcome",
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    wall_time TEXT NOT NULL,          -- ISO-8601 UTC, when the decision was made
    tick INTEGER NOT NULL,            -- tick number since the daemon started
    minute INTEGER NOT NULL,          -- decision minute, minutes since the Unix epoch (simulated in demos)
    group_name TEXT NOT NULL,
    policy TEXT NOT NULL,
    action TEXT NOT NULL,             -- policy | fallback | hold
    data_status TEXT NOT NULL,        -- ok | error | empty | nan | stale | invalid | repeat
    load_tpm REAL,                    -- the load used (NULL when there was none)
    load_minute INTEGER,              -- the minute that load belongs to
    active INTEGER, warming INTEGER, desired_before INTEGER,
    raw_action INTEGER, policy_desired INTEGER, fallback_desired INTEGER,
    recommendation INTEGER,           -- the action clamped to min/max (what scale-in stabilization remembers)
    guards TEXT NOT NULL,             -- JSON list of reasons, in order
    final INTEGER,
    outcome TEXT NOT NULL             -- {" | ".join(OUTCOMES)}
);
CREATE INDEX IF NOT EXISTS decisions_group ON decisions (group_name, id);
PRAGMA user_version = {SCHEMA_VERSION};
"""


@dataclass
class JournalRow:
    wall_time: str
    tick: int
    minute: int
    group_name: str
    policy: str
    action: str
    data_status: str
    load_tpm: float | None
    load_minute: int | None
    active: int | None
    warming: int | None
    desired_before: int | None
    raw_action: int | None
    policy_desired: int | None
    fallback_desired: int | None
    recommendation: int | None
    guards: list[str]
    final: int | None
    outcome: str

    def values(self) -> tuple:
        return tuple(json.dumps(self.guards) if c == "guards" else getattr(self, c) for c in _COLUMNS)


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level="DEFERRED")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._pending: list[tuple] = []

    def add(self, row: JournalRow) -> None:
        self._pending.append(row.values())

    def commit(self) -> None:
        """Write the tick's rows in one transaction."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        with self.db:
            self.db.executemany(
                f"INSERT INTO decisions ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", rows
            )

    def recent_recommendations(self, group: str, since_minute: int) -> list[tuple[int, int]]:
        """(minute, recommendation) of a group's policy/fallback decisions since `since_minute`, oldest first: used to
        restore the scale-in stabilization window after a restart."""
        cur = self.db.execute(
            "SELECT minute, recommendation FROM decisions WHERE group_name = ? AND minute > ? "
            "AND recommendation IS NOT NULL ORDER BY id",
            (group, since_minute),
        )
        return [(int(m), int(f)) for m, f in cur.fetchall()]

    def close(self) -> None:
        self.commit()
        self.db.close()


def read_decisions(path: str | Path, group: str | None = None, last: int = 20) -> list[dict[str, Any]]:
    """The last `last` rows (of `group`, or all groups), oldest first."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(str(p))
    db = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    try:
        db.row_factory = sqlite3.Row
        where, args = ("WHERE group_name = ?", [group]) if group else ("", [])
        rows = db.execute(f"SELECT * FROM decisions {where} ORDER BY id DESC LIMIT ?", [*args, int(last)]).fetchall()
    finally:
        db.close()
    out = []
    for r in reversed(rows):
        d = dict(r)
        d["guards"] = json.loads(d["guards"])
        out.append(d)
    return out
