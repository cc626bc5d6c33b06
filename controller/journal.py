"""The decision journal: one SQLite row per group and tick, written in WAL mode, committed every tick.

Each row explains a decision: the inputs (load and its minute, data status, active, warming, the group's
desired capacity), the policy's raw action and desired capacity, the guards that changed it, the final
capacity and what happened to it (written | dry-run | unchanged | held | paused | error).

Safety of the record:

- one writer per journal: the daemon holds an exclusive `flock` on `<journal>.lock` (holding its pid) for
  its whole life; a second daemon on the same journal is refused (`JournalError`: one line, exit 2);
- a tick's rows stay pending until their transaction commits: when a commit fails (the file is locked by
  another process past `busy_timeout_seconds`, the disk is full) the tick fails and its rows are committed
  with the next tick's, so a capacity that was written always gets its row (at most MAX_PENDING_ROWS are
  kept; older ones are dropped, logged and counted);
- before it writes any group, a tick commits its recommendations (those of groups with scale-in
  stabilization) to `pending_recommendations`, and its decision rows' commit clears them: a daemon killed
  between the two leaves them there, and the restarted daemon's stabilization window still counts them;
- a journal file deleted or replaced while the daemon runs is noticed at the next commit: logged as an
  error, counted (`fleetpilot_journal_errors_total{kind="deleted"}`) and recreated, so rows go on to the
  configured path (the rows before the deletion are gone with the file);
- `check_journal_path` refuses, before anything starts, a path that cannot hold a journal: a directory, a
  file that is not regular (`/dev/full`), a file that is not an SQLite database or not a fleetpilot journal,
  a directory that cannot be written. `fleetpilot config check` and `fleetpilot run` both call it.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import sqlite3
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetpilot.policies.errors import UserError
from fleetpilot.policies.files import LockHeld, hold_lock

log = logging.getLogger("fleetpilot.journal")

#: Rows kept while commits fail (about 70 days of one group at one tick a minute, or 100 ticks of 1,000 groups).
MAX_PENDING_ROWS = 100_000
_SQLITE_HEADER = b"SQLite format 3\x00"


class JournalError(UserError):
    """A journal that cannot be used (path, contents, another writer): one line, exit code 2."""


SCHEMA_VERSION = 3
MAX_STABILIZATION_MINUTES = 1440  #: the longest scale-in stabilization window a config may ask for
#: how long the write-ahead waits for a journal another process holds (the capacity writes wait on it)
INTEND_BUSY_SECONDS = 0.2
OUTCOMES = ("written", "dry-run", "unchanged", "held", "paused", "error", "fenced")
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
#: Columns added by schema version 2 (leader election), NULL in older rows; an older journal gets them at open.
_LEASE_COLUMNS = ("lease_holder", "lease_token")
_ALL_COLUMNS = _COLUMNS + _LEASE_COLUMNS
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    wall_time TEXT NOT NULL,          -- ISO-8601 UTC, when the decision was made
    tick INTEGER NOT NULL,            -- tick number since the daemon started
    minute INTEGER NOT NULL,          -- decision minute, minutes since the Unix epoch (simulated in demos)
    group_name TEXT NOT NULL,
    policy TEXT NOT NULL,
    action TEXT NOT NULL,             -- policy | fallback | hold
    data_status TEXT NOT NULL,        -- ok | error | empty | nan | stale | invalid | repeat | implausible
    load_tpm REAL,                    -- the load used (NULL when there was none)
    load_minute INTEGER,              -- the minute that load belongs to
    active INTEGER, warming INTEGER, desired_before INTEGER,
    raw_action INTEGER, policy_desired INTEGER, fallback_desired INTEGER,
    recommendation INTEGER,           -- the action clamped to min/max (what scale-in stabilization remembers)
    guards TEXT NOT NULL,             -- JSON list of reasons, in order
    final INTEGER,
    outcome TEXT NOT NULL,            -- {" | ".join(OUTCOMES)}
    lease_holder TEXT,                -- leader election: the lease holder that decided (NULL without)
    lease_token INTEGER               -- and its fencing token
);
CREATE INDEX IF NOT EXISTS decisions_group ON decisions (group_name, id);
-- write-ahead: a tick's recommendations, committed before it writes any group and deleted when its decision
-- rows commit; a row left here is a decision that was never journaled (the daemon died in between)
CREATE TABLE IF NOT EXISTS pending_recommendations (
    group_name TEXT NOT NULL,
    minute INTEGER NOT NULL,
    recommendation INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_group ON pending_recommendations (group_name, minute);
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
    lease_holder: str | None = None
    lease_token: int | None = None

    def values(self) -> tuple:
        """The row's columns in `_ALL_COLUMNS` order, its guards as their JSON list (one C call for the
        attributes and a memoized JSON: this runs for every group every tick)."""
        v = list(_GET_COLUMNS(self))
        v[_GUARDS_AT] = guards_json(self.guards)
        return tuple(v)


_GET_COLUMNS = operator.attrgetter(*_ALL_COLUMNS)
_GUARDS_AT = _ALL_COLUMNS.index("guards")


_GUARDS_JSON: dict[tuple[str, ...], str] = {}


def guards_json(reasons: tuple[str, ...] | list[str]) -> str:
    """The `guards` column of a row: the JSON list of reasons (memoized: a few hundred distinct lists)."""
    key = tuple(reasons)
    found = _GUARDS_JSON.get(key)
    if found is None:
        found = json.dumps(list(key))
        if len(_GUARDS_JSON) < 10_000:
            _GUARDS_JSON[key] = found
    return found


def check_journal_path(path: str | Path) -> None:
    """Refuse a journal path the daemon could not write: JournalError naming the path and the reason."""
    raw = str(path)
    p = Path(path)
    if not raw.strip() or raw.strip() == ".":
        raise JournalError("journal_path: is empty")
    if p.is_dir():
        raise JournalError(f"journal_path: {p}: is a directory, expected a file")
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):  # a parent that is a file is named below
        st = None
    except OSError as exc:
        raise JournalError(f"journal_path: {p}: {exc.strerror or exc}") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise JournalError(f"journal_path: {p}: not a regular file")
        if st.st_size > 0:
            _check_is_journal(p)
    # the nearest directory that exists must take new files (the journal, its -wal and -shm files)
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise JournalError(f"journal_path: {p}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fleetpilot-probe-", dir=parent)
    except OSError as exc:
        raise JournalError(f"journal_path: {p}: directory {parent} is not writable ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    if st is not None and not os.access(p, os.R_OK | os.W_OK):
        raise JournalError(f"journal_path: {p}: not writable")


def _check_is_journal(p: Path) -> None:
    try:
        with p.open("rb") as fh:
            head = fh.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise JournalError(f"journal_path: {p}: cannot read: {exc.strerror or exc}") from None
    if head != _SQLITE_HEADER:
        raise JournalError(f"journal_path: {p}: not an SQLite database (a corrupt journal or another file)")
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            cols = {r[1] for r in db.execute("PRAGMA table_info(decisions)")}
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise JournalError(f"journal_path: {p}: not an SQLite database ({exc})") from None
    tables.discard("sqlite_sequence")
    if (tables and "decisions" not in tables) or ("decisions" in tables and not set(_COLUMNS) <= cols):
        raise JournalError(f"journal_path: {p}: an SQLite database but not a fleetpilot journal")


class Journal:
    """The journal of one daemon. `on_error(kind)` is called on each failed commit ("commit"), each failed
    write-ahead of recommendations ("intend") and each deletion noticed ("deleted"): the daemon counts them in
    `fleetpilot_journal_errors_total`."""

    def __init__(self, path: str | Path, busy_timeout_seconds: float = 5.0):
        check_journal_path(path)
        self.path = Path(path)
        self.busy_timeout_seconds = float(busy_timeout_seconds)
        self.on_error: Callable[[str], None] | None = None
        self.dropped = 0
        self._pending: list[tuple] = []
        #: rowid ranges of the write-ahead rows this process recorded, which the next `commit` clears
        self._intended: list[tuple[int, int]] = []
        self._newest_intended: int | None = None  #: the newest minute `intend` recorded (ages old rows out)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.path)
        try:
            self._open()
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise JournalError(f"journal_path: {self.path}: cannot open: {exc}") from None

    def _open(self) -> None:
        self.db = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level="DEFERRED", timeout=self.busy_timeout_seconds
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        _migrate(self.db)
        st = os.stat(self.path)
        self._ident = (st.st_dev, st.st_ino)

    def _report(self, kind: str) -> None:
        if self.on_error is not None:
            self.on_error(kind)

    def add(self, row: JournalRow) -> None:
        self.add_values(row.values())

    def add_values(self, values: tuple) -> None:
        """A row as `JournalRow.values()` gives it."""
        self._pending.append(values)
        if len(self._pending) > MAX_PENDING_ROWS:
            n = len(self._pending) - MAX_PENDING_ROWS
            del self._pending[:n]
            self.dropped += n
            self._intended.clear()  # their write-ahead rows are now the only record left: kept (aged out later)
            log.error("journal rows dropped: commits keep failing", extra={"rows": n, "dropped_total": self.dropped})

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _reopen_if_deleted(self) -> None:
        try:
            st = os.stat(self.path)
            ident = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            ident = None
        if ident == self._ident:
            return
        log.error(
            "journal file deleted or replaced while running; recreating it",
            extra={"path": str(self.path), "pending_rows": len(self._pending)},
        )
        self._report("deleted")
        self.db.close()
        self._intended.clear()  # those rowids were the old file's
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def intend(self, recommendations: list[tuple[str, int, int]]) -> None:
        """Commit (group, minute, recommendation) of a tick's decisions before it writes any group, so that a
        daemon killed before `commit` still leaves the restarted one the scale-in stabilization window it would
        have had. It waits at most INTEND_BUSY_SECONDS for a lock (the writes wait on it). On failure the error
        propagates and nothing is recorded."""
        if not recommendations:
            return
        try:
            self._reopen_if_deleted()
            self.db.execute(f"PRAGMA busy_timeout = {int(INTEND_BUSY_SECONDS * 1000)}")
            try:
                with self.db:
                    # the journal has one writer (its lock file): the rows get the rowids after the largest
                    (before,) = self.db.execute(
                        "SELECT COALESCE(MAX(rowid), 0) FROM pending_recommendations"
                    ).fetchone()
                    self.db.executemany(
                        "INSERT INTO pending_recommendations (group_name, minute, recommendation) VALUES (?, ?, ?)",
                        recommendations,
                    )
                    (after,) = self.db.execute("SELECT MAX(rowid) FROM pending_recommendations").fetchone()
            finally:
                self.db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_seconds * 1000)}")
        except (sqlite3.Error, OSError):
            self._report("intend")
            raise
        self._intended.append((int(before) + 1, int(after)))
        newest = max(m for _, m, _ in recommendations)
        self._newest_intended = newest if self._newest_intended is None else max(self._newest_intended, newest)

    def commit(self) -> None:
        """Write the pending rows (this tick's, and any a failed commit left) in one transaction, which also
        clears the write-ahead recommendations they now stand for. On failure the rows stay pending for the
        next commit and the error propagates (the tick fails)."""
        if not self._pending and self._newest_intended is None:
            return
        try:
            self._reopen_if_deleted()
            with self.db:
                self.db.executemany(
                    f"INSERT INTO decisions ({', '.join(_ALL_COLUMNS)}) VALUES ({', '.join('?' * len(_ALL_COLUMNS))})",
                    self._pending,
                )
                # this process's write-ahead rows (their decisions are in this transaction), and any older than
                # the longest stabilization window; a dead process's newer ones stay, so a second restart soon
                # after the first (even within the same minute) still counts them
                self.db.executemany("DELETE FROM pending_recommendations WHERE rowid BETWEEN ? AND ?", self._intended)
                if self._newest_intended is not None:
                    self.db.execute(
                        "DELETE FROM pending_recommendations WHERE minute < ?",
                        (self._newest_intended - MAX_STABILIZATION_MINUTES,),
                    )
        except (sqlite3.Error, OSError):
            self._report("commit")
            raise
        self._pending.clear()
        self._intended.clear()
        self._newest_intended = None

    def recent_recommendations(self, group: str, since_minute: int) -> list[tuple[int, int]]:
        """(minute, recommendation) of a group's policy/fallback decisions since `since_minute`, and of decisions
        made but never journaled (`intend` without its `commit`), oldest first: used to restore the scale-in
        stabilization window after a restart."""
        cur = self.db.execute(
            "SELECT minute, recommendation FROM ("
            " SELECT minute, recommendation, id AS k FROM decisions"
            "  WHERE group_name = ? AND minute > ? AND recommendation IS NOT NULL"
            " UNION ALL SELECT minute, recommendation, NULL AS k FROM pending_recommendations"
            "  WHERE group_name = ? AND minute > ?"
            ") ORDER BY minute, k",
            (group, since_minute, group, since_minute),
        )
        return [(int(m), int(f)) for m, f in cur.fetchall()]

    def close(self) -> None:
        """Commit what is pending (logging, not raising, when that fails), close, release the lock."""
        if self._lock_fd < 0:
            return
        try:
            self.commit()
        except (sqlite3.Error, OSError) as exc:
            log.error("journal rows lost at shutdown", extra={"rows": len(self._pending), "error": str(exc)})
        finally:
            self.db.close()
            os.close(self._lock_fd)
            self._lock_fd = -1


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a journal of an older schema up to SCHEMA_VERSION: version 2 adds the nullable lease columns (the
    older rows keep NULL there, so they read as before); version 3 adds the `pending_recommendations` table
    (made by the schema script at open)."""
    cols = {r[1] for r in db.execute("PRAGMA table_info(decisions)")}
    with db:
        for name, kind in zip(_LEASE_COLUMNS, ("TEXT", "INTEGER"), strict=True):
            if name not in cols:
                db.execute(f"ALTER TABLE decisions ADD COLUMN {name} {kind}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _lock(path: Path) -> int:
    """An exclusive flock on `<journal>.lock`, held until closed; JournalError naming the holder's pid."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        return hold_lock(lock_path)
    except LockHeld as held:
        raise JournalError(
            f"journal_path: {path}: in use by another fleetpilot daemon (pid {held.pid}); "
            "one daemon per journal: stop it or give this one its own journal_path"
        ) from None
    except OSError as exc:
        what = f"cannot open or create its lock file {lock_path}" if exc.filename else f"cannot lock {lock_path}"
        raise JournalError(f"journal_path: {path}: {what}: {exc.strerror}") from None


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
