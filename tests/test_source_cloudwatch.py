"""CloudWatchSource against a moto server over HTTP (and a fault proxy / dead endpoints), all on 127.0.0.1."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from fleetpilot.controller.sources import cloudwatch
from fleetpilot.controller.sources.base import MetricSource, Sample, SourceError
from fleetpilot.controller.sources.cloudwatch import CloudWatchSource
from tests.real_servers import Fault, MotoAws, now_minute


@pytest.fixture
def metric(aws: MotoAws) -> dict[str, Any]:
    """A fresh namespace, metric name and dimensions per test (the moto server is shared by the session).
    The dimension value is unique too: moto 5.2 ignores the namespace when a query has dimensions."""
    unique = uuid.uuid4().hex[:8]
    return {
        "namespace": f"FleetpilotTest/{unique}",
        "metric_name": "Transactions",
        "dimensions": {"Service": f"web-{unique}", "Stage": "prod"},
    }


def source_for(aws: MotoAws, metric: dict[str, Any], **kwargs) -> CloudWatchSource:
    kwargs.setdefault("endpoint_url", aws.endpoint_url)
    return CloudWatchSource(region=aws.region, **metric, **kwargs)


def put(aws: MotoAws, metric: dict[str, Any], minute: int, values: list[float], **dimensions: str) -> None:
    aws.put_load(metric["namespace"], metric["metric_name"], {**metric["dimensions"], **dimensions}, minute, values)


def test_is_a_metric_source(aws: MotoAws, metric: dict[str, Any]) -> None:
    assert isinstance(source_for(aws, metric), MetricSource)


def test_put_values_come_back_per_minute(aws: MotoAws, metric: dict[str, Any]) -> None:
    now = now_minute()
    for back in range(1, 6):  # minutes now-5 .. now-1, two datapoints each (Sum adds them)
        put(aws, metric, now - back, [1000.0 * back, 5.0])
    # same metric, other dimensions: not ours
    put(aws, metric, now - 1, [9e6], Service="other")
    # the current, incomplete minute is not reported
    put(aws, metric, now, [123.0])
    source = source_for(aws, metric)
    try:
        history = source.history(now - 8, now + 1)
        assert history == [Sample(minute=now - back, load_tpm=1000.0 * back + 5.0) for back in range(5, 0, -1)] + [
            Sample(minute=now, load_tpm=123.0)
        ]
        assert source.history(now - 8, now) == history[:-1]
        assert source.latest(now) == Sample(minute=now - 1, load_tpm=1005.0)
    finally:
        source.close()


def test_statistic_is_used(aws: MotoAws, metric: dict[str, Any]) -> None:
    now = now_minute()
    put(aws, metric, now - 1, [10.0, 30.0, 20.0])
    assert source_for(aws, metric, statistic="Maximum").latest(now) == Sample(now - 1, 30.0)
    assert source_for(aws, metric, statistic="Average").latest(now) == Sample(now - 1, 20.0)
    assert source_for(aws, metric, statistic="Sum").latest(now) == Sample(now - 1, 60.0)


def test_latest_looks_back_for_late_data_and_keeps_its_timestamp(aws: MotoAws, metric: dict[str, Any]) -> None:
    """CloudWatch publishes late: the newest datapoint is older than now-1, and says so."""
    now = now_minute()
    put(aws, metric, now - 4, [400.0])
    put(aws, metric, now - 3, [300.0])
    assert source_for(aws, metric, lookback_minutes=5).latest(now) == Sample(minute=now - 3, load_tpm=300.0)
    assert source_for(aws, metric, lookback_minutes=2).latest(now) is None


def test_no_data_is_none_not_zero(aws: MotoAws, metric: dict[str, Any]) -> None:
    source = source_for(aws, metric)
    assert source.latest(now_minute()) is None
    assert source.history(now_minute() - 60, now_minute()) == []
    assert source.history(now_minute(), now_minute()) == []


def test_history_has_holes_not_zeros(aws: MotoAws, metric: dict[str, Any]) -> None:
    now = now_minute()
    for back in (10, 7, 2):
        put(aws, metric, now - back, [float(back)])
    assert source_for(aws, metric).history(now - 12, now) == [
        Sample(now - 10, 10.0),
        Sample(now - 7, 7.0),
        Sample(now - 2, 2.0),
    ]


def test_endpoint_down_is_an_error_within_seconds(aws: MotoAws, metric: dict[str, Any], unused_url: str) -> None:
    source = source_for(aws, metric, endpoint_url=unused_url, timeout_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(SourceError, match="GetMetricData .*EndpointConnectionError"):
        source.latest(now_minute())
    # refused at once, a few attempts with backoff: generous for a busy machine, far below a hang
    assert time.monotonic() - started < 15.0


def test_silent_endpoint_times_out(aws: MotoAws, metric: dict[str, Any], silent_server: str) -> None:
    source = source_for(aws, metric, endpoint_url=silent_server, timeout_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(SourceError, match="ReadTimeoutError"):
        source.latest(now_minute())
    # two attempts of 0.5 s plus at most 1 s of backoff between them; generous for a busy machine, yet below
    # the 2 x 5 s the default timeout would take
    assert time.monotonic() - started < 2 * 0.5 + 1.0 + 6.0


def test_throttling_is_an_error_then_recovers(aws: MotoAws, metric: dict[str, Any], fault_proxy) -> None:
    now = now_minute()
    put(aws, metric, now - 1, [50.0])
    proxy = fault_proxy(
        Fault("GetMetricData", "Throttling", times=cloudwatch.TOTAL_MAX_ATTEMPTS, message="Rate exceeded")
    )
    source = source_for(aws, metric, endpoint_url=proxy.url)
    with pytest.raises(SourceError, match="Throttling: Rate exceeded"):
        source.latest(now)
    assert proxy.count("GetMetricData") == cloudwatch.TOTAL_MAX_ATTEMPTS  # botocore retried, then gave up
    assert source.latest(now) == Sample(now - 1, 50.0)  # the next tick reads again


def test_access_denied_is_an_error(aws: MotoAws, metric: dict[str, Any], fault_proxy) -> None:
    proxy = fault_proxy(
        Fault(
            "GetMetricData",
            "AccessDenied",
            times=-1,
            status=403,
            message="not authorized to perform: cloudwatch:GetMetricData",
        )
    )
    with pytest.raises(SourceError, match="AccessDenied: not authorized"):
        source_for(aws, metric, endpoint_url=proxy.url).history(now_minute() - 5, now_minute())
    assert proxy.count("GetMetricData") == 1  # not retried


def test_only_the_documented_actions_are_called(aws: MotoAws, metric: dict[str, Any]) -> None:
    source = source_for(aws, metric)
    called: list[str] = []
    source._client.meta.events.register("before-call.*.*", lambda model, **_: called.append(f"cloudwatch:{model.name}"))
    source.latest(now_minute())
    source.history(now_minute() - 30, now_minute())
    assert called and set(called) <= set(cloudwatch.AWS_ACTIONS)


def test_invalid_arguments_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="namespace"):
        CloudWatchSource("", "m", {})
    with pytest.raises(ValueError, match="timeout_seconds"):
        CloudWatchSource("ns", "m", {}, timeout_seconds=0)
    with pytest.raises(ValueError, match="lookback_minutes"):
        CloudWatchSource("ns", "m", {}, lookback_minutes=0)
