"""One boto3 session per process, and one client per (service, region, endpoint, settings), shared by the
CloudWatch sources and the Auto Scaling backends of every group.

Creating a client from a warm session takes milliseconds instead of the ~0.1 s of loading the service model
again, but each client still holds about 0.23 MB and 7 ms of start-up: at 10,000 groups one client per group
was 2.3 GB and over a minute. boto3 clients are thread-safe, so groups with the same settings share one.
Imported only where AWS is spoken.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

_SESSION: boto3.session.Session | None = None
_SESSION_LOCK = threading.Lock()
_CLIENTS: dict[tuple, Any] = {}
#: connections each shared client keeps: the daemon reads with up to 16 threads (botocore's default is 10)
POOL_CONNECTIONS = 16


def _frozen(value: Any) -> Any:
    return tuple(sorted((k, _frozen(v)) for k, v in value.items())) if isinstance(value, dict) else value


def client(service: str, region: str, endpoint_url: str | None, **options: Any) -> Any:
    """The client of the shared session for these `botocore.config.Config` options, made on first use and
    shared by every caller asking for the same (boto3 sessions are not thread-safe; their clients are).
    The options are the whole key: a caller that needs another setting asks for it and gets its own client.
    Shared clients are never closed by their users; they live as long as the process."""
    global _SESSION
    options.setdefault("max_pool_connections", POOL_CONNECTIONS)
    key = (service, region, endpoint_url, _frozen(options))
    with _SESSION_LOCK:
        if key not in _CLIENTS:
            if _SESSION is None:
                _SESSION = boto3.session.Session()
            config = Config(**options)
            _CLIENTS[key] = _SESSION.client(service, region_name=region, endpoint_url=endpoint_url, config=config)
        return _CLIENTS[key]


def forget_clients() -> None:
    """Drop the shared clients (tests: a fresh client per test, with no event handler another test left)."""
    with _SESSION_LOCK:
        _CLIENTS.clear()
