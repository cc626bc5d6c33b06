"""Logs as JSON lines on stderr: one object per line (`ts`, `level`, `logger`, `msg`, plus `extra` fields).

Every line passes through `redact` before it is written, whatever logged it (a message, an `extra` field, a
traceback): URL userinfo (`http://TOKEN@host`, `user:p@ss@host`), secret-looking query parameters,
`Authorization`-style header echoes, `Basic`/`Bearer` credentials, and every secret registered with
`register_secret` (the Prometheus source registers its password, token and their base64 forms) become `***`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import traceback
from datetime import UTC, datetime
from typing import Any

#: scheme://USERINFO@ -> scheme://***@ (greedy up to the last '@' before the path: passwords may hold '@').
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/?#\s\"'<>]*)@", re.I)
#: ?token=..., &access_token=..., &X-Amz-Signature=..., &auth=..., &apikey=...
_QUERY_SECRET = re.compile(
    r"(?P<k>[?&;](?:[^=&\s\"']*(?:token|secret|pass|pwd|key|sig|auth|credential|session|jwt)[^=&\s\"']*))"
    r"=(?P<v>[^&\s\"'<>]*)",
    re.I,
)
#: An echoed credential header (`Authorization: Basic ...`, `X-Api-Key: ...`, `Cookie: ...`) to the line's end.
_HEADER_ECHO = re.compile(
    r"(?P<h>\b(?:proxy-)?authorization|\bx-api-key|\bx-auth-token|\bcookie|\bset-cookie)(?P<sep>\s*[:=]\s*)"
    r"(?P<v>[^\r\n\"'<>]+)",
    re.I,
)
#: `Basic <base64>`, `Bearer <token>` anywhere.
_SCHEME_CREDENTIAL = re.compile(r"\b(?P<s>basic|bearer|token)\s+(?P<v>[A-Za-z0-9._~+/=-]{6,})", re.I)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(secret: str | None) -> None:
    """From now on, `secret` (and its JSON-escaped form) never appears in a log line. Secrets shorter than 4
    characters are not registered (masking every 'a' would garble the logs, and protect nothing)."""
    if not secret or len(secret) < 4:
        return
    with _secrets_lock:
        _secrets.add(secret)
        _secrets.add(json.dumps(secret)[1:-1])


def redact(text: str) -> str:
    """`text` with every credential-looking part replaced by `***` (see the module docstring)."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['k']}=***", text)
    text = _HEADER_ECHO.sub(lambda m: f"{m['h']}{m['sep']}***", text)
    text = _SCHEME_CREDENTIAL.sub(lambda m: f"{m['s']} ***", text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, "***")
    return text


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
        return redact(json.dumps(out, default=str, separators=(",", ":")))


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
