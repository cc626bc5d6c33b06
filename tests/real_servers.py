"""Real components for integration tests, all on 127.0.0.1 (nothing beyond loopback is contacted).

Fixtures (loaded by `pytest_plugins = ["tests.real_servers"]` in tests/conftest.py):

| fixture              | scope    | what it is                                                                        |
|----------------------|----------|-----------------------------------------------------------------------------------|
| `load_exporter`      | session  | a prometheus_client registry served over HTTP, with gauges/counter the test sets  |
| `prometheus_factory` | session  | starts real `/usr/bin/prometheus` servers scraping given targets every 1 s        |
| `vanishing_exporter` | session  | a second exporter a test may stop for good (its series go stale)                  |
| `prometheus_server`  | session  | one real Prometheus server scraping both exporters, ready and scraped once        |
| `moto_server`        | session  | moto's ThreadedMotoServer (AWS APIs over real HTTP) with helpers                  |
| `aws`                | function | `moto_server` plus AWS test credentials and region in the environment             |
| `fault_proxy`        | function | factory: an HTTP proxy in front of moto that answers chosen operations with AWS   |
|                      |          | errors (query XML, JSON or Smithy RPC v2 CBOR), forwarding everything else        |
| `silent_server`      | function | a TCP server that accepts connections and never answers (timeouts)               |
| `canned_http`        | function | factory: an HTTP server answering every request with a fixed status and body      |
| `unused_url`         | function | `http://127.0.0.1:<port>` with nothing listening (connection refused)             |

A missing Prometheus binary FAILS the tests that need it (CI installs the `prometheus` package); it is
never a skip.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

#: Where the Debian package puts the server; FLEETPILOT_PROMETHEUS_BIN overrides it.
PROMETHEUS_BIN = "/usr/bin/prometheus"
PROMETHEUS_INSTALL_HINT = "apt-get install prometheus"
#: How long a Prometheus server may take to become ready, seconds.
PROMETHEUS_READY_TIMEOUT_SECONDS = 30.0
#: The scrape job name of the test exporter.
EXPORTER_JOB = "fleetpilot-test"
#: The scrape job of the exporter a test stops (stale series).
VANISHING_JOB = "fleetpilot-test-vanishing"

AWS_TEST_REGION = "us-east-1"
AWS_TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_http_server(handler: type) -> ThreadingHTTPServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving `handler` in a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def stop_http_server(server: ThreadingHTTPServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


class LoopbackServer:
    """Start/stop of a test proxy's one loopback HTTP server; the proxy keeps `url` and `_server` fields."""

    url: str
    _server: ThreadingHTTPServer | None

    def _serve(self, handler: type) -> None:
        self._server = start_http_server(handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        stop_http_server(self._server)


def http_get_json(url: str, timeout_seconds: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_seconds) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())


def now_minute() -> int:
    """The current epoch minute (wall clock)."""
    return int(time.time() // 60)


# -- test exporter -------------------------------------------------------------------------------------


@dataclass
class LoadExporter:
    """A prometheus_client registry served on 127.0.0.1, with values the test controls.

    Series: `fleetpilot_test_load_tpm` (gauge), `fleetpilot_test_shard_load_tpm{shard="a"|"b"}` (two gauge
    series, for the more-than-one-series case), `fleetpilot_test_transactions_total` (counter).
    """

    target: str
    url: str
    registry: Any
    load_tpm: Any
    shard_load_tpm: Any
    transactions: Any


class VanishingExporter:
    """A second exporter, scraped by `prometheus_server` as job VANISHING_JOB, that a test can stop for good
    (its series then go stale). Series: `fleetpilot_test_vanishing_load_tpm` = 42."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        registry = CollectorRegistry()
        Gauge("fleetpilot_test_vanishing_load_tpm", "Load of a target that goes away.", registry=registry).set(42.0)
        port = free_port()
        self.target = f"127.0.0.1:{port}"
        self._server, self._thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)


@pytest.fixture(scope="session")
def vanishing_exporter() -> Iterator[VanishingExporter]:
    exporter = VanishingExporter()
    try:
        yield exporter
    finally:
        exporter.stop()


@pytest.fixture(scope="session")
def load_exporter() -> Iterator[LoadExporter]:
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    registry = CollectorRegistry()
    load_tpm = Gauge("fleetpilot_test_load_tpm", "Load set by the test, transactions per minute.", registry=registry)
    shard = Gauge("fleetpilot_test_shard_load_tpm", "Two series, set by the test.", ["shard"], registry=registry)
    shard.labels(shard="a").set(1.0)
    shard.labels(shard="b").set(2.0)
    transactions = Counter("fleetpilot_test_transactions", "Transactions counted by the test.", registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield LoadExporter(
            target=f"127.0.0.1:{port}",
            url=f"http://127.0.0.1:{port}/metrics",
            registry=registry,
            load_tpm=load_tpm,
            shard_load_tpm=shard,
            transactions=transactions,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- Prometheus server ---------------------------------------------------------------------------------


def prometheus_binary() -> str:
    """The Prometheus server binary; FAILS (not skips) with the install command when it is missing."""
    candidates = [os.environ.get("FLEETPILOT_PROMETHEUS_BIN"), PROMETHEUS_BIN, shutil.which("prometheus")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        f"the Prometheus server binary is missing ({PROMETHEUS_BIN} not found): "
        f"`{PROMETHEUS_INSTALL_HINT}` (CI installs it), or set FLEETPILOT_PROMETHEUS_BIN",
        pytrace=False,
    )


class PrometheusServer:
    """A real Prometheus server on 127.0.0.1:<free port>, scraping `targets` every second, data in `workdir`."""

    def __init__(
        self, binary: str, workdir: Path, targets: list[str], more_jobs: dict[str, list[str]] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: {EXPORTER_JOB}\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
            + "".join(
                f"  - job_name: {job}\n    static_configs:\n      - targets: {json.dumps(job_targets)}\n"
                for job, job_targets in (more_jobs or {}).items()
            )
        )
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.started_at = time.time()
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + PROMETHEUS_READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(f"prometheus exited with {self.process.returncode}: {self.log_tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(
            f"prometheus not ready within {PROMETHEUS_READY_TIMEOUT_SECONDS} s: {self.log_tail()}", pytrace=False
        )

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def query(self, expression: str, at_seconds: float | None = None) -> dict[str, Any]:
        """The raw `data` of an instant query (test helper, independent of the code under test)."""
        params = {"query": expression}
        if at_seconds is not None:
            params["time"] = str(at_seconds)
        answer = http_get_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        assert answer["status"] == "success", answer
        return answer["data"]

    def wait_for(
        self, expression: str, predicate: Callable[[list[float]], bool], timeout_seconds: float = 15.0
    ) -> list[float]:
        """Poll an instant query (now) until `predicate(values)` holds; fail with the last values otherwise."""
        deadline = time.monotonic() + timeout_seconds
        values: list[float] = []
        while time.monotonic() < deadline:
            data = self.query(expression)
            values = [float(item["value"][1]) for item in data["result"]] if data["resultType"] == "vector" else []
            if predicate(values):
                return values
            time.sleep(0.2)
        pytest.fail(
            f"Prometheus query {expression!r} never satisfied the condition in {timeout_seconds} s; "
            f"last values {values}",
            pytrace=False,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="session")
def prometheus_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., PrometheusServer]]:
    """Factory: `prometheus_factory(targets, more_jobs=None)` -> a ready PrometheusServer (first scrapes come
    about 5 s after start: Prometheus' target discovery updates every 5 s)."""
    binary = prometheus_binary()
    servers: list[PrometheusServer] = []

    def start(targets: list[str], more_jobs: dict[str, list[str]] | None = None) -> PrometheusServer:
        server = PrometheusServer(binary, tmp_path_factory.mktemp("prometheus"), targets, more_jobs)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def prometheus_server(
    prometheus_factory: Callable[..., PrometheusServer],
    load_exporter: LoadExporter,
    vanishing_exporter: VanishingExporter,
) -> PrometheusServer:
    """The session's Prometheus: job EXPORTER_JOB scrapes `load_exporter`, job VANISHING_JOB
    `vanishing_exporter`; returned once both have been scraped."""
    server = prometheus_factory([load_exporter.target], {VANISHING_JOB: [vanishing_exporter.target]})
    server.wait_for("up", lambda values: values == [1.0, 1.0])
    return server


# -- moto server (AWS APIs over HTTP) ------------------------------------------------------------------


class MotoAws:
    """Helpers around a moto server: boto3 clients with test credentials, groups, CloudWatch data."""

    def __init__(self, endpoint_url: str, region: str = AWS_TEST_REGION) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self._image_id: str | None = None
        self._session: Any = None
        self._clients: dict[str, Any] = {}
        self._lock = threading.RLock()

    def client(self, service: str) -> Any:
        """A boto3 client for `service` on the moto server (cached: model loading is slow)."""
        import boto3

        with self._lock:
            if service not in self._clients:
                if self._session is None:
                    self._session = boto3.session.Session(**AWS_TEST_CREDENTIALS)
                self._clients[service] = self._session.client(
                    service, region_name=self.region, endpoint_url=self.endpoint_url
                )
            return self._clients[service]

    def image_id(self) -> str:
        """An AMI id from moto's default images (looked up once: moto loads its image list slowly)."""
        with self._lock:
            if self._image_id is None:
                images = self.client("ec2").describe_images(Owners=["amazon"])["Images"]
                assert images, "moto has no default AMIs"
                self._image_id = sorted(image["ImageId"] for image in images)[0]
            return self._image_id

    def create_group(self, min_size: int = 1, max_size: int = 5, desired: int = 2, name: str | None = None) -> str:
        """A launch template and an Auto Scaling group using it; returns the group's name."""
        name = name or f"fleetpilot-test-{uuid.uuid4().hex[:8]}"
        template = f"{name}-lt"
        self.client("ec2").create_launch_template(
            LaunchTemplateName=template, LaunchTemplateData={"ImageId": self.image_id(), "InstanceType": "t3.micro"}
        )
        self.client("autoscaling").create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
            MinSize=min_size,
            MaxSize=max_size,
            DesiredCapacity=desired,
            AvailabilityZones=[f"{self.region}a"],
        )
        return name

    def group(self, name: str) -> dict[str, Any]:
        """The group as DescribeAutoScalingGroups reports it."""
        groups = self.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        return groups["AutoScalingGroups"][0]

    def put_load(
        self,
        namespace: str,
        metric_name: str,
        dimensions: dict[str, str],
        minute: int,
        values: list[float],
        second_in_minute: int = 10,
    ) -> None:
        """PutMetricData: `values` as separate datapoints inside epoch minute `minute`."""
        timestamp = dt.datetime.fromtimestamp(minute * 60 + second_in_minute, tz=dt.UTC)
        self.client("cloudwatch").put_metric_data(
            Namespace=namespace,
            MetricData=[
                {
                    "MetricName": metric_name,
                    "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
                    "Timestamp": timestamp,
                    "Value": value,
                }
                for value in values
            ],
        )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoAws]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoAws(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def aws(moto_server: MotoAws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoAws:
    """moto with the default boto3 credential chain pointed at test credentials (nothing from ~/.aws)."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_AUTOSCALING",
        "AWS_ENDPOINT_URL_CLOUDWATCH",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", moto_server.region)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_server


# -- fault-injecting proxy in front of moto ------------------------------------------------------------


def _cbor_text(text: str) -> bytes:
    raw = text.encode()
    n = len(raw)
    if n < 24:
        head = bytes([0x60 + n])
    elif n < 256:
        head = bytes([0x78, n])
    else:
        head = bytes([0x79]) + n.to_bytes(2, "big")
    return head + raw


def cbor_text_map(items: dict[str, str]) -> bytes:
    """A CBOR map of text to text (enough for a Smithy RPC v2 error body)."""
    assert len(items) < 24
    return bytes([0xA0 + len(items)]) + b"".join(_cbor_text(k) + _cbor_text(v) for k, v in items.items())


@dataclass
class Fault:
    """Answer the next `times` requests for `operation` (e.g. "SetDesiredCapacity") with AWS error `code`;
    `times=-1` answers all of them."""

    operation: str
    code: str
    times: int = 1
    status: int = 400
    message: str = "injected by the fleetpilot test proxy"


@dataclass
class FaultProxy(LoopbackServer):
    """A real HTTP server on 127.0.0.1 in front of `upstream` (moto): answers the requests chosen by its
    faults with AWS errors in the protocol the client speaks, forwards all others unchanged, and records
    the operation of every request it saw (`operations`, and with its time.monotonic() in `seen`). While
    `partitioned` is set it is a network partition: requests get no answer (the connection is dropped once
    the client gave up or the partition ends), and nothing reaches moto."""

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)
    seen: list[tuple[float, str]] = field(default_factory=list)
    partitioned: threading.Event = field(default_factory=threading.Event)
    dropped: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, operation: str) -> int:
        return sum(1 for seen in self.operations if seen == operation)

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def times(self, operation: str) -> list[float]:
        """When each request for `operation` arrived (time.monotonic() of this process)."""
        with self._lock:
            return [t for t, seen in self.seen if seen == operation]

    def _take_fault(self, operation: str) -> Fault | None:
        with self._lock:
            self.operations.append(operation)
            self.seen.append((time.monotonic(), operation))
            for fault in self.faults:
                if fault.operation == operation and fault.times != 0:
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None

    def start(self) -> FaultProxy:
        proxy = self
        upstream = urllib.parse.urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.partitioned.is_set():  # hold the request unanswered, then drop the connection
                    until = time.monotonic() + 30.0
                    while proxy.partitioned.is_set() and time.monotonic() < until and proxy._server is not None:
                        time.sleep(0.05)
                    with proxy._lock:
                        proxy.dropped += 1
                    self.close_connection = True
                    return
                protocol, operation = self._operation(body)
                fault = proxy._take_fault(operation)
                if fault is not None:
                    self._send_error(protocol, fault)
                else:
                    self._forward(body)

            do_GET = do_POST

            def _operation(self, body: bytes) -> tuple[str, str]:
                if "/operation/" in self.path:
                    return "cbor", self.path.rstrip("/").rsplit("/", 1)[-1]
                target = self.headers.get("X-Amz-Target")
                if target:
                    return "json", target.rsplit(".", 1)[-1]
                form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
                return "query", (form.get("Action") or ["?"])[0]

            def _send_error(self, protocol: str, fault: Fault) -> None:
                headers = {"x-amzn-RequestId": str(uuid.uuid4())}
                if protocol == "query":
                    payload = (
                        '<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
                        f"<Error><Type>Sender</Type><Code>{fault.code}</Code><Message>{fault.message}</Message>"
                        f"</Error><RequestId>{headers['x-amzn-RequestId']}</RequestId></ErrorResponse>"
                    ).encode()
                    headers["Content-Type"] = "text/xml"
                elif protocol == "cbor":
                    payload = cbor_text_map({"__type": f"com.amazonaws.error#{fault.code}", "message": fault.message})
                    headers.update(
                        {
                            "Content-Type": "application/cbor",
                            "smithy-protocol": "rpc-v2-cbor",
                            "x-amzn-query-error": f"{fault.code};Sender",
                        }
                    )
                else:
                    payload = json.dumps({"__type": fault.code, "message": fault.message}).encode()
                    headers.update(
                        {"Content-Type": "application/x-amz-json-1.0", "x-amzn-query-error": f"{fault.code};Sender"}
                    )
                self._reply(fault.status, headers, payload)

            def _forward(self, body: bytes) -> None:
                connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
                try:
                    skip = {"connection", "keep-alive", "transfer-encoding", "content-length"}
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    payload = response.read()
                    self._reply(
                        response.status, {k: v for k, v in response.getheaders() if k.lower() not in skip}, payload
                    )
                finally:
                    connection.close()

            def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._serve(Handler)
        return self


@pytest.fixture
def fault_proxy(aws: MotoAws) -> Iterator[Callable[..., FaultProxy]]:
    """Factory: `fault_proxy(Fault(...), ...)` -> a started FaultProxy in front of the moto server."""
    proxies: list[FaultProxy] = []

    def make(*faults: Fault) -> FaultProxy:
        proxy = FaultProxy(upstream=aws.endpoint_url, faults=list(faults)).start()
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.close()


# -- misbehaving HTTP endpoints ------------------------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[str]:
    """`http://127.0.0.1:<port>`: connections are accepted (by the kernel's backlog) but never answered."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture
def unused_url() -> str:
    """`http://127.0.0.1:<port>` with nothing listening: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


@dataclass
class CannedHttp:
    """An HTTP server on 127.0.0.1 answering every request with `status`, `body` and `content_type`;
    `requests` records (path, headers) of each request."""

    url: str
    requests: list[tuple[str, dict[str, str]]]
    server: ThreadingHTTPServer


@pytest.fixture
def canned_http() -> Iterator[Callable[[int, bytes, str], CannedHttp]]:
    servers: list[ThreadingHTTPServer] = []

    def make(status: int, body: bytes, content_type: str = "application/json") -> CannedHttp:
        requests: list[tuple[str, dict[str, str]]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                requests.append((self.path, dict(self.headers.items())))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

        server = start_http_server(Handler)
        servers.append(server)
        return CannedHttp(url=f"http://127.0.0.1:{server.server_address[1]}", requests=requests, server=server)

    try:
        yield make
    finally:
        for server in servers:
            stop_http_server(server)


# -- a proxy in front of the real Prometheus server -------------------------------------------------------
@dataclass
class PromProxy(LoopbackServer):
    """Forwards to a real Prometheus server; `mode` injects a fault into instant queries (range queries, the
    backfill, always pass): `pass`; `slow` (answers after `delay` s); `empty` and `nan` (the real server
    answers a rewritten query: no series / NaN); `garbage` (an HTML page with status 200); `http500`."""

    upstream: str
    mode: str = "pass"
    delay: float = 2.0
    instant_queries: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)

    def start(self) -> PromProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                parts = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(parts.query))
                mode = proxy.mode if parts.path.endswith("/api/v1/query") else "pass"
                if parts.path.endswith("/api/v1/query"):
                    proxy.instant_queries += 1
                if mode == "garbage":
                    return self._send(200, b"<html><body>502 Bad Gateway (nginx)</body></html>", "text/html")
                if mode == "http500":
                    return self._send(500, b"internal error", "text/plain")
                if mode == "slow":
                    time.sleep(proxy.delay)
                if mode == "empty":
                    params["query"] = "fleetpilot_reliability_no_such_series"
                if mode == "nan":
                    params["query"] = "vector(0) / 0"
                url = f"{proxy.upstream}{parts.path}?{urllib.parse.urlencode(params)}"
                try:
                    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback
                        return self._send(r.status, r.read(), r.headers.get("Content-Type", "application/json"))
                except urllib.error.HTTPError as e:
                    return self._send(e.code, e.read(), "application/json")

            def _send(self, status, body, ctype):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (timeout)
                    pass

        self._serve(Handler)
        return self


@pytest.fixture
def prom_proxy(prometheus_server: PrometheusServer):
    proxy = PromProxy(prometheus_server.url).start()
    yield proxy
    proxy.close()
