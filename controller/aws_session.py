"""One boto3 session per process, shared by the CloudWatch source and the Auto Scaling backend.

Creating a client from a warm session takes milliseconds instead of the ~0.1 s of loading the service model
again (many groups, one daemon). Imported only where AWS is spoken.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

_SESSION: boto3.session.Session | None = None
_SESSION_LOCK = threading.Lock()


def client(service: str, region: str, endpoint_url: str | None, config: Config) -> Any:
    """A client from the shared session (boto3 sessions are not thread-safe; their clients are)."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = boto3.session.Session()
        return _SESSION.client(service, region_name=region, endpoint_url=endpoint_url, config=config)
