"""The Prometheus metric source: a PromQL expression yielding transactions per minute, over the HTTP API.

Plain `urllib` (no extra dependency). Each tick runs one instant query, evaluated at the end of the last
complete minute; at start the daemon backfills with range queries at a 60 s step.

Outcomes are explicit, never a silent zero:

| Prometheus answers                       | `latest`           | `history`                  |
|------------------------------------------|--------------------|----------------------------|
| one series (or a scalar)                 | `Sample`           | one `Sample` per point     |
| no series (empty result, stale series)   | `None`             | no sample for that minute  |
| `NaN`, `+Inf` or `-Inf`                  | `Sample` with NaN  | `Sample` with NaN          |
| more than one series                     | `SourceError`      | `SourceError`              |
| HTTP error, timeout, refused, bad answer | `SourceError`      | `SourceError`              |

Timestamps: a value Prometheus evaluated at time `t` (seconds) describes the minute that *ends* at `t`,
so the sample's minute is `ceil(t / 60) - 1`; `latest(now_minute)` evaluates at `now_minute * 60`, the end
of minute `now_minute - 1`.

Credentials: `bearer_token` (config `bearer_token_file`), `basic_auth` (config `basic_auth` with a
`password_file` or `password_env`), or, discouraged, embedded in the URL (`http://user:pass@host:9090`, sent
as basic auth). None of them appears in messages or `repr` (the URL reads `http://***@host:9090`), nor the
base64 pair, nor an error page that echoes the Authorization header back.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from typing import Any

from fleetpilot.controller.logs import redact, register_secret
from fleetpilot.controller.sources.base import MetricSource, Sample, SourceError

log = logging.getLogger(__name__)

#: Prometheus refuses range queries of more than 11,000 points per series (its `query_range` limit);
#: history is fetched in chunks of at most this many one-minute points.
MAX_POINTS_PER_RANGE_QUERY = 10_000

#: The step of range queries, seconds: one point per minute.
STEP_SECONDS = 60

#: Read the answer in chunks of this many bytes, checking the overall deadline between chunks.
_READ_CHUNK_BYTES = 65_536

#: Largest answer read (bytes): a week of one-minute points is well under 1 MiB per range query chunk; a server
#: (or a proxy in front of it) answering more is refused instead of filling the daemon's memory.
MAX_ANSWER_BYTES = 32 << 20

#: At most this many characters of an error answer's body are quoted in a message.
_QUOTE_CHARS = 200


def _one_line(text: str, limit: int = _QUOTE_CHARS) -> str:
    """Collapse whitespace to single spaces and cut to `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def minute_ending_at(timestamp_seconds: float) -> int:
    """The epoch minute whose end is `timestamp_seconds` (a point evaluated at t describes (t-60, t])."""
    return math.ceil(timestamp_seconds / 60.0) - 1


def _parse_value(raw: Any, what: str) -> float:
    """A Prometheus sample value ("1234.5", "NaN", "+Inf") as a float; non-finite values become NaN."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SourceError(f"{what}: unparseable sample value {raw!r}") from None
    return value if math.isfinite(value) else math.nan


def _parse_point(point: Any, what: str) -> Sample:
    """A `[timestamp_seconds, "value"]` pair as a Sample of the minute ending at the timestamp."""
    if not isinstance(point, list) or len(point) != 2:
        raise SourceError(f"{what}: unexpected sample {_one_line(repr(point))}")
    try:
        timestamp_seconds = float(point[0])
    except (TypeError, ValueError):
        raise SourceError(f"{what}: unparseable timestamp {point[0]!r}") from None
    return Sample(minute=minute_ending_at(timestamp_seconds), load_tpm=_parse_value(point[1], what))


class PrometheusSource(MetricSource):
    """Load in transactions per minute from a PromQL expression that aggregates to one series.

    `url` is the server's base URL (e.g. `http://prometheus:9090`, optionally with a path prefix and
    `user:password@`); `query` a PromQL expression such as `sum(rate(http_requests_total[2m])) * 60`;
    `timeout_seconds` bounds connecting, each read, and reading the whole answer.
    """

    def __init__(
        self,
        url: str,
        query: str,
        timeout_seconds: float = 5.0,
        *,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Prometheus url must be http(s)://host[:port][/prefix], got {_mask_url(url)!r}")
        if not query or not query.strip():
            raise ValueError("Prometheus query must be a non-empty PromQL expression")
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds!r}")
        self.query = query
        self.timeout_seconds = float(timeout_seconds)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"Prometheus url has an invalid port: {_mask_url(url)!r}") from None
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if port is not None:
            netloc = f"{netloc}:{port}"
        self._base_url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._secrets: list[str] = []
        self._auth_header: str | None = None
        self.url = self._base_url
        if parts.username is not None or parts.password is not None:
            basic_auth = (urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or ""))
            self.url = urllib.parse.urlunsplit((parts.scheme, f"***@{netloc}", parts.path.rstrip("/"), "", ""))
        if basic_auth is not None:
            user, password = basic_auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._auth_header = f"Basic {token}"
            # a password, or a user name alone (`http://TOKEN@host`: the token), and the encoded pair
            self._secrets = [password or user, token, f"{user}:{password}"]
        elif bearer_token is not None:
            self._auth_header = f"Bearer {bearer_token}"
            self._secrets = [bearer_token]
        for secret in self._secrets:
            register_secret(secret)  # never in any log line, whoever logs it
        self._opener = urllib.request.build_opener()

    def __repr__(self) -> str:
        return f"PrometheusSource(url={self.url!r}, query={self.query!r}, timeout_seconds={self.timeout_seconds})"

    # -- the MetricSource protocol -------------------------------------------------------------------

    def latest(self, now_minute: int) -> Sample | None:
        """The load of minute `now_minute - 1`, evaluated at its end; None when the expression is empty."""
        evaluated_at_seconds = now_minute * 60
        data = self._api("/api/v1/query", {"query": self.query, "time": str(evaluated_at_seconds)})
        result_type = data.get("resultType")
        result = data.get("result")
        what = self._what()
        if result_type == "scalar":
            return _parse_point(result, what)
        if result_type != "vector":
            raise SourceError(
                f"{what}: expected an instant vector, got a {result_type!r} result"
                + (" (drop the [range] selector)" if result_type == "matrix" else "")
            )
        if not isinstance(result, list):
            raise SourceError(f"{what}: unexpected answer {_one_line(repr(data))}")
        if not result:
            return None
        self._check_one_series(result)
        item = result[0]
        if not isinstance(item, dict) or "value" not in item:
            raise SourceError(f"{what}: unexpected series {_one_line(repr(item))}")
        return _parse_point(item["value"], what)

    def history(self, start_minute: int, end_minute: int) -> list[Sample]:
        """Per-minute samples in [start_minute, end_minute), oldest first; minutes Prometheus has no value
        for are missing (holes), never zero."""
        by_minute: dict[int, Sample] = {}
        for chunk_start in range(start_minute, end_minute, MAX_POINTS_PER_RANGE_QUERY):
            chunk_end = min(end_minute, chunk_start + MAX_POINTS_PER_RANGE_QUERY)
            for sample in self._range(chunk_start, chunk_end):
                if start_minute <= sample.minute < end_minute:
                    by_minute[sample.minute] = sample
        return [by_minute[minute] for minute in sorted(by_minute)]

    def close(self) -> None:
        """Nothing to release: each request opens and closes its own connection."""

    # -- internals -----------------------------------------------------------------------------------

    def _what(self) -> str:
        return f"Prometheus at {self.url}, query {self.query!r}"

    def _check_one_series(self, result: list[Any]) -> None:
        if len(result) > 1:
            labels = [item.get("metric", {}) if isinstance(item, dict) else item for item in result[:3]]
            raise SourceError(
                f"{self._what()}: {len(result)} series returned (e.g. {_one_line(repr(labels), 160)}); "
                "the expression must aggregate to one series, e.g. wrap it in sum(...)"
            )

    def _range(self, chunk_start: int, chunk_end: int) -> list[Sample]:
        """Points evaluated at the end of each minute in [chunk_start, chunk_end)."""
        params = {
            "query": self.query,
            "start": str((chunk_start + 1) * 60),
            "end": str(chunk_end * 60),
            "step": str(STEP_SECONDS),
        }
        data = self._api("/api/v1/query_range", params)
        result = data.get("result")
        what = self._what()
        if data.get("resultType") != "matrix" or not isinstance(result, list):
            raise SourceError(f"{what}: expected a range result, got {_one_line(repr(data))}")
        if not result:
            return []
        self._check_one_series(result)
        values = result[0].get("values") if isinstance(result[0], dict) else None
        if not isinstance(values, list):
            raise SourceError(f"{what}: unexpected series {_one_line(repr(result[0]))}")
        return [_parse_point(point, what) for point in values]

    def _api(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """GET an API endpoint and return its `data`; every failure is one SourceError line."""
        request = urllib.request.Request(
            f"{self._base_url}{path}?{urllib.parse.urlencode(params)}",
            headers={"Accept": "application/json", "User-Agent": "fleetpilot"},
        )
        if self._auth_header:
            request.add_unredirected_header("Authorization", self._auth_header)
        what = self._what()
        deadline = time.monotonic() + self.timeout_seconds
        try:
            with self._opener.open(request, timeout=self.timeout_seconds) as response:
                body = self._read_until(response, deadline)
        except urllib.error.HTTPError as exc:
            detail = self._error_detail(exc)
            raise SourceError(self._mask(f"{what}: HTTP {exc.code} {exc.reason}{detail}")) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise SourceError(self._mask(f"{what}: no answer within {self.timeout_seconds:g} s")) from None
            raise SourceError(self._mask(f"{what}: cannot reach the server: {_one_line(str(reason))}")) from None
        except TimeoutError:
            raise SourceError(self._mask(f"{what}: no answer within {self.timeout_seconds:g} s")) from None
        except (HTTPException, OSError) as exc:
            raise SourceError(
                self._mask(f"{what}: connection failed: {type(exc).__name__}: {_one_line(str(exc))}")
            ) from None
        try:
            answer = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            text = body[:_QUOTE_CHARS].decode("utf-8", "replace")
            raise SourceError(self._mask(f"{what}: answer is not JSON: {_one_line(text)!r}")) from None
        if not isinstance(answer, dict):
            raise SourceError(self._mask(f"{what}: unexpected answer {_one_line(repr(answer))}"))
        if answer.get("status") != "success":
            raise SourceError(
                self._mask(
                    f"{what}: status {answer.get('status')!r}, {answer.get('errorType', '')}: "
                    f"{_one_line(str(answer.get('error', '')))}"
                )
            )
        for warning in answer.get("warnings") or []:
            log.warning("%s", self._mask(f"{what}: Prometheus warning: {_one_line(str(warning))}"))
        data = answer.get("data")
        if not isinstance(data, dict):
            raise SourceError(self._mask(f"{what}: answer has no data object: {_one_line(repr(answer))}"))
        return data

    def _read_until(self, response: Any, deadline: float) -> bytes:
        """Read the whole body, failing once the overall deadline has passed (a server that trickles) or the
        body passes MAX_ANSWER_BYTES (a server that floods)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("deadline passed while reading the answer")
            chunk = response.read(_READ_CHUNK_BYTES)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise SourceError(self._mask(f"{self._what()}: answer larger than {MAX_ANSWER_BYTES >> 20} MiB"))

    def _error_detail(self, exc: urllib.error.HTTPError) -> str:
        """Prometheus' own error text from an HTTP error answer (JSON `error`), else the start of the body."""
        try:
            body = exc.read(64_000)
        except Exception:  # noqa: BLE001 - the status line is enough
            return ""
        finally:
            exc.close()
        try:
            answer = json.loads(body)
            if isinstance(answer, dict) and answer.get("error"):
                return f": {answer.get('errorType', 'error')}: {_one_line(str(answer['error']))}"
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
        text = body.decode("utf-8", "replace").strip()
        return f": {_one_line(text)}" if text else ""

    def _mask(self, message: str) -> str:
        """Belt and braces: no credential appears in a message, even if the server or a library echoes it (an
        error page quoting the Authorization header, a URL with userinfo)."""
        for secret in self._secrets:
            if secret:
                message = message.replace(secret, "***")
        return redact(message)


def _mask_url(url: str) -> str:
    """`url` with any `user:password@` replaced by `***@`."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
