"""The CloudWatch metric source: one metric's per-minute statistic through GetMetricData (boto3).

boto3 is imported only here. Credentials come from boto3's default chain (environment, shared config,
container / instance role, IRSA web identity); `endpoint_url` points the client elsewhere (tests: moto).

Outcomes are explicit, never a silent zero:

| CloudWatch answers                          | `latest`                       | `history`                 |
|---------------------------------------------|--------------------------------|---------------------------|
| datapoints                                  | the newest `Sample` in the     | one `Sample` per minute   |
|                                             | last `lookback_minutes`        | with a datapoint          |
| no datapoint (nothing published yet)        | `None`                         | no sample for that minute |
| throttling, access denied, any API error,   | `SourceError`                  | `SourceError`             |
| endpoint down, timeout, missing credentials |                                |                           |

A datapoint's timestamp is the start of its 60 s period, so its minute is `timestamp // 60`. CloudWatch
publishes with a delay of a minute or more, so `latest` may return an older minute than `now_minute - 1`;
the caller's staleness rule decides what to do with it (the sample carries its minute).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fleetpilot.controller.aws_session import client as aws_client
from fleetpilot.controller.sources.base import MetricSource, Sample, SourceError

log = logging.getLogger(__name__)

#: The AWS API actions this source calls (the IAM policy in docs/aws.md grants exactly these).
AWS_ACTIONS: tuple[str, ...] = ("cloudwatch:GetMetricData",)

#: One datapoint per minute.
PERIOD_SECONDS = 60

#: Total attempts per API call including botocore's own retry (standard mode, jittered backoff of at most
#: 1 s before the second attempt): a dead or throttling endpoint fails within a few seconds, and the next
#: tick tries again.
TOTAL_MAX_ATTEMPTS = 2

#: GetMetricData's own limit of datapoints per answer (AWS documentation); longer ranges are paginated.
MAX_DATAPOINTS_PER_CALL = 100_800


def _minute_of(timestamp: dt.datetime) -> int:
    """The epoch minute that starts at (or contains) `timestamp`."""
    return math.floor(timestamp.timestamp() / 60.0)


def _utc(minute: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(minute * 60, tz=dt.UTC)


class CloudWatchSource(MetricSource):
    """Load in transactions per minute from one CloudWatch metric.

    `namespace`, `metric_name` and `dimensions` name the metric exactly (CloudWatch matches the full set of
    dimensions); `statistic` is the per-minute statistic (`Sum` for a count of transactions, or `Average`,
    `Maximum`, `p99`, ...); `timeout_seconds` bounds connecting and each read; `lookback_minutes` is how far
    back `latest` looks for the newest datapoint.
    """

    def __init__(
        self,
        namespace: str,
        metric_name: str,
        dimensions: dict[str, str],
        statistic: str = "Sum",
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        timeout_seconds: float = 5.0,
        lookback_minutes: int = 5,
    ) -> None:
        if not namespace or not metric_name:
            raise ValueError("CloudWatch namespace and metric_name must be non-empty")
        if not statistic:
            raise ValueError("CloudWatch statistic must be non-empty (e.g. Sum)")
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds!r}")
        if lookback_minutes < 1:
            raise ValueError(f"lookback_minutes must be >= 1, got {lookback_minutes!r}")
        self.namespace = namespace
        self.metric_name = metric_name
        self.dimensions = dict(dimensions)
        self.statistic = statistic
        self.region = region
        self.endpoint_url = endpoint_url
        self.timeout_seconds = float(timeout_seconds)
        self.lookback_minutes = int(lookback_minutes)
        self._client = aws_client(
            "cloudwatch",
            region,
            endpoint_url,
            connect_timeout=self.timeout_seconds,
            read_timeout=self.timeout_seconds,
            retries={"mode": "standard", "total_max_attempts": TOTAL_MAX_ATTEMPTS},
            user_agent_extra="fleetpilot",
        )
        #: this tick's answer from `controller.aws_batch` (now_minute, Sample | None | SourceError)
        self._prefetched: tuple[int, Sample | None | SourceError] | None = None

    def __repr__(self) -> str:
        return (
            f"CloudWatchSource(namespace={self.namespace!r}, metric_name={self.metric_name!r}, "
            f"dimensions={self.dimensions!r}, statistic={self.statistic!r}, region={self.region!r})"
        )

    # -- the MetricSource protocol -------------------------------------------------------------------

    def latest(self, now_minute: int) -> Sample | None:
        """The newest datapoint in [now_minute - lookback_minutes, now_minute); None when there is none.
        Answered from this tick's batched read when `controller.aws_batch` prefetched it."""
        got, self._prefetched = self._prefetched, None
        if got is not None and got[0] == now_minute:
            if isinstance(got[1], SourceError):
                raise got[1]
            return got[1]
        samples = self._fetch(now_minute - self.lookback_minutes, now_minute)
        return samples[-1] if samples else None

    def history(self, start_minute: int, end_minute: int) -> list[Sample]:
        """Per-minute samples in [start_minute, end_minute), oldest first; minutes without a datapoint
        are missing (holes), never zero."""
        if end_minute <= start_minute:
            return []
        return self._fetch(start_minute, end_minute)

    def close(self) -> None:
        """Nothing to release: the client is shared with the other groups (controller.aws_session)."""

    # -- batched reads (controller.aws_batch) ----------------------------------------------------------

    def batch_key(self) -> tuple[str, str, str | None] | None:
        """Sources with the same key are read together with GetMetricData (see MetricSource.batch_key)."""
        return ("cloudwatch", self.region, self.endpoint_url)

    @property
    def client(self) -> Any:
        return self._client

    def clear_prefetch(self) -> None:
        self._prefetched = None

    def set_prefetch(self, now_minute: int, got: Sample | None | SourceError) -> None:
        self._prefetched = (now_minute, got)

    def query(self, query_id: str) -> dict[str, Any]:
        """This source's metric as one GetMetricData query."""
        return {
            "Id": query_id,
            "MetricStat": {
                "Metric": {
                    "Namespace": self.namespace,
                    "MetricName": self.metric_name,
                    "Dimensions": [{"Name": k, "Value": v} for k, v in sorted(self.dimensions.items())],
                },
                "Period": PERIOD_SECONDS,
                "Stat": self.statistic,
            },
            "ReturnData": True,
        }

    @staticmethod
    def request(start_minute: int, end_minute: int, queries: list[dict[str, Any]]) -> dict[str, Any]:
        """A GetMetricData request for `queries` over [start_minute, end_minute)."""
        return {
            "MetricDataQueries": queries,
            "StartTime": _utc(start_minute),
            "EndTime": _utc(end_minute),
            "ScanBy": "TimestampAscending",
            "MaxDatapoints": MAX_DATAPOINTS_PER_CALL,
        }

    @staticmethod
    def collect(result: dict[str, Any], start_minute: int, end_minute: int, into: dict[int, float]) -> None:
        """A query result's datapoints in [start_minute, end_minute) added to `into` (minute -> load; a
        non-finite value is NaN)."""
        for timestamp, value in zip(result.get("Timestamps") or [], result.get("Values") or [], strict=False):
            minute = _minute_of(timestamp)
            if start_minute <= minute < end_minute:
                load = float(value)
                into[minute] = load if math.isfinite(load) else math.nan

    @staticmethod
    def newest(series: dict[int, float]) -> Sample | None:
        if not series:
            return None
        minute = max(series)
        return Sample(minute=minute, load_tpm=series[minute])

    # -- internals -----------------------------------------------------------------------------------

    def _what(self) -> str:
        return f"CloudWatch GetMetricData {self.namespace}/{self.metric_name} ({self.statistic})"

    def _fetch(self, start_minute: int, end_minute: int) -> list[Sample]:
        request = self.request(start_minute, end_minute, [self.query("load")])
        by_minute: dict[int, float] = {}
        while True:
            answer = self._call(request)
            for message in answer.get("Messages") or []:
                log.warning("%s: %s: %s", self._what(), message.get("Code"), message.get("Value"))
            for result in answer.get("MetricDataResults") or []:
                status = result.get("StatusCode", "Complete")
                if status not in ("Complete", "PartialData"):
                    details = "; ".join(f"{m.get('Code')}: {m.get('Value')}" for m in result.get("Messages") or [])
                    raise SourceError(f"{self._what()}: status {status}" + (f" ({details})" if details else ""))
                self.collect(result, start_minute, end_minute, by_minute)
            token = answer.get("NextToken")
            if not token:
                break
            request["NextToken"] = token
        return [Sample(minute=minute, load_tpm=by_minute[minute]) for minute in sorted(by_minute)]

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._client.get_metric_data(**request)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            message = " ".join(str(error.get("Message", "")).split())
            raise SourceError(f"{self._what()} failed: {code}: {message}") from None
        except BotoCoreError as exc:
            raise SourceError(f"{self._what()} failed: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
