"""Logs as JSON lines on stderr: one object per line (`ts`, `level`, `logger`, `msg`, plus `extra` fields)."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

#: Fields of a LogRecord that are not user data.
_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(out, default=str, separators=(",", ":"))


class _DropFilter(logging.Filter):
    """Drops APScheduler's 'maximum number of running instances reached': counted as skipped ticks instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def setup_logging(level: str = "INFO", stream=None) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_DropFilter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Streaks:
    """Log a fault once when its streak starts (or changes kind) and once when it ends, never every tick.

    `bad(key, kind, msg, ...)` each tick the fault is there; `good(key, msg, ...)` each tick it is not. The
    first bad tick of a streak logs `msg` at `level`; later ticks of the same kind log at DEBUG; the first good
    tick after a streak logs the recovery at INFO with the number of bad ticks. Metrics count every tick.
    """

    def __init__(self, logger: logging.Logger):
        self.log = logger
        self.open: dict[tuple, list] = {}  #: key -> [kind, ticks]

    def bad(
        self,
        key: tuple,
        kind: str,
        msg: str,
        level: int = logging.WARNING,
        exc_info: bool | BaseException = False,
        **extra: Any,
    ) -> None:
        """`exc_info`: True inside an `except` block, or the exception itself (its traceback is logged)."""
        cur = self.open.get(key)
        if cur is not None and cur[0] == kind:
            cur[1] += 1
            self.log.debug(msg, extra={**extra, "streak_ticks": cur[1]})
            return
        self.open[key] = [kind, 1]
        self.log.log(
            level,
            msg,
            extra={**extra, "streak": "started; logged again only when it changes or ends"},
            exc_info=exc_info,
        )

    def good(self, key: tuple, msg: str, **extra: Any) -> None:
        cur = self.open.pop(key, None)
        if cur is not None:
            self.log.info(msg, extra={**extra, "kind": cur[0], "bad_ticks": cur[1]})
