"""PrometheusSource against a real Prometheus server (and misbehaving HTTP endpoints), all on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import math
import time

import pytest

from fleetpilot.controller.sources.base import MetricSource, Sample, SourceError
from fleetpilot.controller.sources.prometheus import MAX_POINTS_PER_RANGE_QUERY, PrometheusSource, minute_ending_at
from tests.real_servers import VANISHING_JOB, LoadExporter, PrometheusServer, VanishingExporter, now_minute

GAUGE = "fleetpilot_test_load_tpm"


def set_and_wait(exporter: LoadExporter, prometheus: PrometheusServer, value: float) -> None:
    """Set the exporter's gauge and wait until Prometheus has scraped it."""
    exporter.load_tpm.set(value)
    prometheus.wait_for(GAUGE, lambda values: values == [value])


def test_is_a_metric_source(prometheus_server: PrometheusServer) -> None:
    assert isinstance(PrometheusSource(prometheus_server.url, GAUGE), MetricSource)


def test_minute_ending_at() -> None:
    assert minute_ending_at(120.0) == 1  # evaluated at the end of minute 1 (60..120]
    assert minute_ending_at(120.5) == 2
    assert minute_ending_at(179.999) == 2


def test_latest_is_the_value_the_exporter_served(
    load_exporter: LoadExporter, prometheus_server: PrometheusServer
) -> None:
    set_and_wait(load_exporter, prometheus_server, 1234.5)
    minute = now_minute()
    # evaluated at the end of the current minute (`now_minute` = the next one): the newest scrape
    sample = PrometheusSource(prometheus_server.url, GAUGE).latest(minute + 1)
    assert sample == Sample(minute=minute, load_tpm=1234.5)


def test_history_has_one_sample_per_minute_with_prometheus_timestamps(prometheus_server: PrometheusServer) -> None:
    """`vector(time())` evaluates to its own evaluation time, so each value names the point it came from."""
    start = now_minute() - 40
    samples = PrometheusSource(prometheus_server.url, "vector(time())").history(start, start + 30)
    assert [s.minute for s in samples] == list(range(start, start + 30))
    for sample in samples:
        assert sample.load_tpm == (sample.minute + 1) * 60  # evaluated at the end of its minute


def test_history_longer_than_one_range_query_is_chunked(prometheus_server: PrometheusServer) -> None:
    minutes = 2 * MAX_POINTS_PER_RANGE_QUERY + 123
    start = now_minute() - minutes - 10
    samples = PrometheusSource(prometheus_server.url, "vector(time())").history(start, start + minutes)
    assert [s.minute for s in samples] == list(range(start, start + minutes))
    assert all(s.load_tpm == (s.minute + 1) * 60 for s in samples)


def test_history_of_an_empty_range_is_empty(prometheus_server: PrometheusServer) -> None:
    source = PrometheusSource(prometheus_server.url, "vector(time())")
    assert source.history(100, 100) == []
    assert source.history(100, 50) == []


def test_history_has_holes_before_data_not_zeros(
    load_exporter: LoadExporter, prometheus_server: PrometheusServer
) -> None:
    set_and_wait(load_exporter, prometheus_server, 777.0)
    minute = now_minute()
    samples = PrometheusSource(prometheus_server.url, GAUGE).history(minute - 30, minute + 1)
    first_scraped_minute = minute_ending_at(prometheus_server.started_at)
    assert samples, "the newest minute has data"
    # the minutes before Prometheus had data are holes, not zeros (the shared exporter's gauge itself may have
    # been 0 before a test set it: that is a real, scraped zero)
    assert all(s.minute >= first_scraped_minute for s in samples), "no sample before Prometheus had data"
    assert samples[-1] == Sample(minute=minute, load_tpm=777.0)
    assert [s.minute for s in samples] == sorted({s.minute for s in samples})


def test_empty_result_is_none_not_zero(prometheus_server: PrometheusServer) -> None:
    source = PrometheusSource(prometheus_server.url, "fleetpilot_test_no_such_metric_tpm")
    assert source.latest(now_minute()) is None
    assert source.history(now_minute() - 10, now_minute()) == []


@pytest.mark.parametrize("query", ["vector(0) / 0", "0 / 0"], ids=["vector", "scalar"])
def test_nan_is_a_nan_sample(prometheus_server: PrometheusServer, query: str) -> None:
    source = PrometheusSource(prometheus_server.url, query)
    minute = now_minute()
    sample = source.latest(minute)
    assert sample is not None and sample.minute == minute - 1 and math.isnan(sample.load_tpm)
    history = source.history(minute - 3, minute)
    assert [s.minute for s in history] == [minute - 3, minute - 2, minute - 1]
    assert all(math.isnan(s.load_tpm) for s in history)


@pytest.mark.parametrize("query", ["vector(1) / 0", "vector(-1) / 0"])
def test_infinity_is_reported_as_nan(prometheus_server: PrometheusServer, query: str) -> None:
    sample = PrometheusSource(prometheus_server.url, query).latest(now_minute())
    assert sample is not None and math.isnan(sample.load_tpm)


def test_more_than_one_series_is_an_error_naming_the_query(
    load_exporter: LoadExporter, prometheus_server: PrometheusServer
) -> None:
    query = "fleetpilot_test_shard_load_tpm"
    prometheus_server.wait_for(query, lambda values: len(values) == 2)
    source = PrometheusSource(prometheus_server.url, query)
    with pytest.raises(
        SourceError,
        match=r"2 series.*'fleetpilot_test_shard_load_tpm'|"
        r"'fleetpilot_test_shard_load_tpm'.*2 series",
    ) as info:
        source.latest(now_minute() + 1)
    assert "sum(" in str(info.value)
    minute = now_minute()
    with pytest.raises(SourceError, match="2 series"):
        source.history(minute - 2, minute + 1)
    # aggregated, the same series are one
    sample = PrometheusSource(prometheus_server.url, f"sum({query})").latest(minute + 1)
    assert sample is not None and sample.load_tpm == 3.0


def test_range_vector_expression_is_an_error(prometheus_server: PrometheusServer) -> None:
    with pytest.raises(SourceError, match="instant vector"):
        PrometheusSource(prometheus_server.url, f"{GAUGE}[1m]").latest(now_minute())


def test_invalid_promql_is_an_error_with_prometheus_message(prometheus_server: PrometheusServer) -> None:
    with pytest.raises(SourceError, match=r"HTTP 400.*bad_data.*parse error") as info:
        PrometheusSource(prometheus_server.url, "sum(").latest(now_minute())
    assert "\n" not in str(info.value)


def test_stopped_server_is_an_error(prometheus_factory, load_exporter: LoadExporter) -> None:
    server = prometheus_factory([load_exporter.target])
    source = PrometheusSource(server.url, "vector(1)", timeout_seconds=2)
    assert source.latest(now_minute()) is not None
    server.stop()
    with pytest.raises(SourceError, match="cannot reach the server.*refused"):
        source.latest(now_minute())
    with pytest.raises(SourceError, match="cannot reach the server"):
        source.history(now_minute() - 5, now_minute())


def test_series_of_a_vanished_target_goes_stale_to_none(
    prometheus_server: PrometheusServer, vanishing_exporter: VanishingExporter
) -> None:
    """When the scrape target disappears, Prometheus marks its series stale: None, not the last value."""
    query = "fleetpilot_test_vanishing_load_tpm"
    source = PrometheusSource(prometheus_server.url, query)
    prometheus_server.wait_for(query, lambda values: values == [42.0])
    assert source.latest(now_minute() + 1) == Sample(minute=now_minute(), load_tpm=42.0)
    vanishing_exporter.stop()
    prometheus_server.wait_for(f'up{{job="{VANISHING_JOB}"}}', lambda values: values == [0.0])
    assert source.latest(now_minute() + 1) is None


def test_slow_server_times_out_within_the_timeout(silent_server: str) -> None:
    source = PrometheusSource(silent_server, GAUGE, timeout_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"no answer within 0.5 s"):
        source.latest(now_minute())
    # generous for a busy machine, yet below the default timeout's 5 s: the 0.5 s given is the one applied
    assert time.monotonic() - started < 0.5 + 3.5


@pytest.mark.parametrize(
    ("status", "body", "content_type", "message"),
    [
        (200, b"<html>not the API</html>", "text/html", "not JSON"),
        (
            200,
            b'{"status": "error", "errorType": "timeout", "error": "query timed out"}',
            "application/json",
            "status 'error', timeout: query timed out",
        ),
        (200, b'{"status": "success"}', "application/json", "no data object"),
        (
            200,
            b'{"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "x"]}]}}',
            "application/json",
            "unparseable sample value",
        ),
        (503, b"Service Unavailable\nupstream down", "text/plain", "HTTP 503 .*: Service Unavailable upstream down"),
        (
            422,
            b'{"status": "error", "errorType": "execution", "error": "too many samples"}',
            "application/json",
            "HTTP 422 .*execution: too many samples",
        ),
    ],
    ids=["html", "status-error", "no-data", "bad-value", "http-503", "http-422-json"],
)
def test_bad_answers_are_one_line_errors(
    canned_http, status: int, body: bytes, content_type: str, message: str
) -> None:
    server = canned_http(status, body, content_type)
    with pytest.raises(SourceError, match=message) as info:
        PrometheusSource(server.url, GAUGE).latest(now_minute())
    assert "\n" not in str(info.value)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(canned_http, unused_url: str) -> None:
    server = canned_http(500, b"boom s3cret-not-echoed", "text/plain")
    url = server.url.replace("http://", "http://alice:s3cret@") + "/prom/"
    source = PrometheusSource(url, GAUGE)
    assert "s3cret" not in repr(source) and "***@" in repr(source)
    with pytest.raises(SourceError) as info:
        source.latest(now_minute())
    assert "s3cret" not in str(info.value) and "***@127.0.0.1" in str(info.value)
    path, headers = server.requests[-1]
    assert path.startswith("/prom/api/v1/query?")
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    down = PrometheusSource(unused_url.replace("http://", "http://alice:s3cret@"), GAUGE)
    with pytest.raises(SourceError) as info:
        down.latest(now_minute())
    assert "s3cret" not in str(info.value)


def test_query_parameters_are_the_minute_ends(canned_http) -> None:
    empty = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}).encode()
    server = canned_http(200, empty)
    assert PrometheusSource(server.url, GAUGE).history(1000, 1010) == []
    path, _ = server.requests[-1]
    assert "start=60060" in path and "end=60600" in path and "step=60" in path


@pytest.mark.parametrize("url", ["ftp://host", "prometheus:9090", "http://", "http://host:notaport"])
def test_invalid_url_is_refused_at_construction(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        PrometheusSource(url, GAUGE)


def test_invalid_arguments_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="query"):
        PrometheusSource("http://127.0.0.1:9090", "  ")
    with pytest.raises(ValueError, match="timeout_seconds"):
        PrometheusSource("http://127.0.0.1:9090", GAUGE, timeout_seconds=0)
    with pytest.raises(ValueError) as info:
        PrometheusSource("ftp://bob:hunter2@host", GAUGE)
    assert "hunter2" not in str(info.value)
