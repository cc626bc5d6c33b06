"""AWS reads in batches: one per-tick prefetch of every CloudWatch source and EC2 Auto Scaling backend.

Without it a tick makes one GetMetricData and one DescribeAutoScalingGroups call per group (a thousand groups:
two thousand calls a minute, throttled). The daemon calls `prefetch(sources, backends, now_minute)` once per
tick before it reads its groups; this fills each source's and backend's per-tick cache, which their
`latest` / `read` / `set_desired` use instead of their own call:

- CloudWatch sources sharing a region and endpoint (and the same lookback window) are read with GetMetricData
  in calls of up to `MAX_QUERIES_PER_CALL` (500) queries, following NextToken; each result is mapped back to
  its source by query id: datapoints -> the newest sample, no datapoint -> `None` (`empty`), a result whose
  status is not Complete/PartialData -> that source's own SourceError;
- Auto Scaling backends sharing a region and endpoint are described with DescribeAutoScalingGroups in pages of
  up to `MAX_NAMES_PER_CALL` (100) names, following NextToken; a group missing from the answer gets its own
  BackendError ("not found"), the others are read and written as usual.

A whole call that fails for a reason one group can cause (a ValidationError, access denied) leaves that call's
sources or backends un-prefetched: they fall back to their own single call, so each gets its own error and one
bad group never holds the others. Throttling and server errors are retried with the backends' backoff, shared
by all the calls to one client (`SharedBackoff`: a throttled call delays every call after it to that endpoint,
instead of each group hammering it); when the retries run out, every group of that call gets the error.

boto3 is imported only here and in the AWS source and backend.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from fleetpilot.controller.backends.base import BackendError
from fleetpilot.controller.backends.ec2_asg import RETRYABLE_ERROR_CODES, Ec2AsgBackend, backoff_seconds
from fleetpilot.controller.sources.base import SourceError
from fleetpilot.controller.sources.cloudwatch import CloudWatchSource

log = logging.getLogger(__name__)

#: GetMetricData's limit of queries per call (AWS documentation).
MAX_QUERIES_PER_CALL = 500
#: DescribeAutoScalingGroups' page size (MaxRecords at most 100, AWS documentation).
MAX_NAMES_PER_CALL = 100


class BatchCallError(RuntimeError):
    """A batched call failed after its retries; `per_group` is False when one group may be the cause (the
    groups then fall back to their own calls)."""

    def __init__(self, message: str, per_group: bool):
        super().__init__(message)
        self.per_group = per_group


class SharedBackoff:
    """The backoff state of one client (service, region, endpoint), shared by every call to it: after a
    throttled answer no call goes out before `not_before`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.not_before = 0.0
        self.throttled = 0  #: throttled or failed attempts seen (all calls)
        self.rng = random.Random()

    def wait(self, interrupt: threading.Event | None = None) -> bool:
        """Sleep until the client may be called again; False when interrupted (shutdown)."""
        with self._lock:
            delay = self.not_before - time.monotonic()
        if delay <= 0:
            return True
        if interrupt is not None:
            return not interrupt.wait(delay)
        time.sleep(delay)
        return True

    def failed(self, attempt: int, base_seconds: float) -> float:
        """A retryable failure: push `not_before` out by this attempt's backoff; returns the delay."""
        with self._lock:
            self.throttled += 1
            delay = backoff_seconds(attempt, base_seconds, self.rng)
            self.not_before = max(self.not_before, time.monotonic() + delay)
            return delay


_BACKOFFS: dict[Hashable, SharedBackoff] = {}
_BACKOFFS_LOCK = threading.Lock()


def shared_backoff(key: Hashable) -> SharedBackoff:
    with _BACKOFFS_LOCK:
        if key not in _BACKOFFS:
            _BACKOFFS[key] = SharedBackoff()
        return _BACKOFFS[key]


def call_with_backoff(
    call: Callable[[], dict[str, Any]],
    what: str,
    backoff: SharedBackoff,
    max_retries: int,
    base_seconds: float,
    interrupt: threading.Event | None = None,
) -> dict[str, Any]:
    """One API call, retried on throttling, 5xx and connection failures with the client's shared backoff.
    Raises BatchCallError."""
    last = ""
    for attempt in range(max_retries + 1):
        if not backoff.wait(interrupt):
            raise BatchCallError(f"{what} failed (retries stopped: shutting down): {last}", per_group=False)
        try:
            return call()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "")
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            last = f"{code or status}: {' '.join(str(error.get('Message', '')).split())}"
            if code not in RETRYABLE_ERROR_CODES and status < 500:
                raise BatchCallError(f"{what} failed: {last}", per_group=True) from None
        except (BotoConnectionError, HTTPClientError) as exc:
            last = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        except BotoCoreError as exc:
            raise BatchCallError(f"{what} failed: {type(exc).__name__}: {exc}", per_group=False) from None
        if attempt < max_retries:
            delay = backoff.failed(attempt, base_seconds)
            log.debug("%s: %s; retry %d of %d in %.2f s (shared)", what, last, attempt + 1, max_retries, delay)
    raise BatchCallError(f"{what} failed after {max_retries + 1} attempts: {last}", per_group=False)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --- CloudWatch --------------------------------------------------------------------------------------------
def prefetch_sources(sources: Sequence[CloudWatchSource], now_minute: int) -> int:
    """Fill each source's cache for `now_minute` (see the module docstring); returns the calls made."""
    by_key: dict[tuple, list[CloudWatchSource]] = {}
    for s in sources:
        s.clear_prefetch()
        by_key.setdefault((s.region, s.endpoint_url, s.lookback_minutes), []).append(s)
    calls = 0
    for (region, endpoint, _), members in by_key.items():
        backoff = shared_backoff(("cloudwatch", region, endpoint))
        failed: str | None = None
        for chunk in _chunks(members, MAX_QUERIES_PER_CALL):
            if failed is not None:  # the endpoint is throttling or down: no more calls to it this tick
                for s in chunk:
                    s.set_prefetch(now_minute, SourceError(f"not read this tick: {failed}"))
                continue
            n, failed = _get_metric_data(chunk, now_minute, backoff)
            calls += n
    return calls


def _get_metric_data(
    chunk: Sequence[CloudWatchSource], now_minute: int, backoff: SharedBackoff
) -> tuple[int, str | None]:
    """One batch of up to 500 queries (all its pages); (calls made, the error when the endpoint failed)."""
    first = chunk[0]
    start, end = now_minute - first.lookback_minutes, now_minute
    ids = {f"q{i}": s for i, s in enumerate(chunk)}
    request = first.request(start, end, [s.query(qid) for qid, s in ids.items()])
    series: dict[str, dict[int, float]] = {qid: {} for qid in ids}
    errors: dict[str, str] = {}
    seen: set[str] = set()
    calls = 0
    what = f"CloudWatch GetMetricData ({len(chunk)} queries, {first.region})"
    while True:
        calls += 1
        try:
            answer = call_with_backoff(
                lambda: first.client.get_metric_data(**request), what, backoff, max_retries=1, base_seconds=0.5
            )
        except BatchCallError as exc:
            if exc.per_group:  # perhaps one query's fault: each source asks on its own
                log.warning("%s; the sources are read one by one", exc)
                return calls, None
            for s in chunk:
                s.set_prefetch(now_minute, SourceError(str(exc)))
            return calls, str(exc)
        for result in answer.get("MetricDataResults") or []:
            qid = result.get("Id")
            if qid not in ids:
                continue
            seen.add(qid)
            status = result.get("StatusCode", "Complete")
            if status not in ("Complete", "PartialData"):
                details = "; ".join(f"{m.get('Code')}: {m.get('Value')}" for m in result.get("Messages") or [])
                errors[qid] = f"{ids[qid]._what()}: status {status}" + (f" ({details})" if details else "")
            ids[qid].collect(result, start, end, series[qid])
        token = answer.get("NextToken")
        if not token:
            break
        request["NextToken"] = token
    for qid, s in ids.items():
        if qid in errors:
            s.set_prefetch(now_minute, SourceError(errors[qid]))
        elif qid not in seen:
            s.set_prefetch(now_minute, SourceError(f"{s._what()}: no result in the batched answer"))
        else:
            s.set_prefetch(now_minute, s.newest(series[qid]))
    return calls, None


# --- Auto Scaling ------------------------------------------------------------------------------------------
def prefetch_backends(backends: Sequence[Ec2AsgBackend]) -> int:
    """Fill each backend's cache of its group for this tick (see the module docstring); returns the calls."""
    by_key: dict[tuple, list[Ec2AsgBackend]] = {}
    for b in backends:
        b.clear_prefetch()
        by_key.setdefault((b.region, b.endpoint_url), []).append(b)
    calls = 0
    for (region, endpoint), members in by_key.items():
        backoff = shared_backoff(("autoscaling", region, endpoint))
        unique: dict[str, list[Ec2AsgBackend]] = {}
        for b in members:
            unique.setdefault(b.group_name, []).append(b)
        failed: str | None = None
        for chunk in _chunks(list(unique), MAX_NAMES_PER_CALL):
            if failed is not None:  # the endpoint is throttling or down: no more calls to it this tick
                for name in chunk:
                    for b in unique[name]:
                        b.set_prefetch(BackendError(f"not read this tick: {failed}"))
                continue
            n, failed = _describe(chunk, unique, backoff)
            calls += n
    return calls


def _describe(
    names: Sequence[str], unique: dict[str, list[Ec2AsgBackend]], backoff: SharedBackoff
) -> tuple[int, str | None]:
    """One page of up to 100 names (following NextToken); (calls made, the error when the endpoint failed)."""
    first = unique[names[0]][0]
    request: dict[str, Any] = {"AutoScalingGroupNames": list(names), "MaxRecords": MAX_NAMES_PER_CALL}
    found: dict[str, dict[str, Any]] = {}
    calls = 0
    what = f"DescribeAutoScalingGroups ({len(names)} groups, {first.region})"
    while True:
        calls += 1
        try:
            answer = call_with_backoff(
                lambda: first.client.describe_auto_scaling_groups(**request),
                what,
                backoff,
                first.max_retries,
                first.retry_base_seconds,
                first.interrupted,
            )
        except BatchCallError as exc:
            if exc.per_group:
                log.warning("%s; the groups are described one by one", exc)
                return calls, None
            for name in names:
                for b in unique[name]:
                    b.set_prefetch(BackendError(str(exc)))
            return calls, str(exc)
        for group in answer.get("AutoScalingGroups") or []:
            found[str(group.get("AutoScalingGroupName"))] = group
        token = answer.get("NextToken")
        if not token:
            break
        request["NextToken"] = token
    for name in names:
        for b in unique[name]:
            b.set_prefetch(found.get(name) or BackendError(b.not_found()))
    return calls, None


def prefetch(sources: Iterable[Any], backends: Iterable[Any], now_minute: int) -> int:
    """The per-tick prefetch of every batchable source and backend among `sources` and `backends`; returns
    the API calls made."""
    cw = [s for s in sources if isinstance(s, CloudWatchSource)]
    asg = [b for b in backends if isinstance(b, Ec2AsgBackend)]
    return (prefetch_sources(cw, now_minute) if cw else 0) + (prefetch_backends(asg) if asg else 0)
