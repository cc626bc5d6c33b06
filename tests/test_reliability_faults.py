"""Fault matrix, in process: the daemon's real tick against a real Prometheus server and moto over HTTP, with
faults injected between them (a proxy in front of Prometheus, the fault proxy in front of moto, a stopped
server, a clock that jumps).

For every fault: the tick never fails (`partial`, never `error`), bad data never scales the group in, the fault
is counted in a metric, and it is logged once per streak (plus one line when it ends), not once per tick.
docs/reliability.md lists each case with the test that shows it.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fleetpilot.controller.clock import Clock
from fleetpilot.controller.config import DaemonConfig
from fleetpilot.controller.daemon import Daemon
from fleetpilot.controller.journal import read_decisions
from fleetpilot.policies.base import Policy, PolicyOutput
from fleetpilot.policies.registry import make_policy
from tests.real_servers import Fault, MotoAws, PromProxy, now_minute

#: A load Prometheus computes for any evaluation time, so history and "now" are real answers of a real server
#: at any (simulated) minute: 1,500..6,500 tpm over a 9.4-hour period, whole numbers.
LOAD_QUERY = "floor(4000 + 2500 * sin(vector(time()) / 5400))"
#: Explicit rule parameters: the tests do not move when the rule's tuned defaults do.
TT_PARAMS = {"target_utilization": 0.65, "scale_in_tolerance": 0.1, "scale_in_cooldown_minutes": 0}


def load_at(minute: int) -> float:
    """What LOAD_QUERY gives for `minute` (evaluated at the minute's end)."""
    return float(math.floor(4000 + 2500 * math.sin((minute + 1) * 60 / 5400)))


class StepClock(Clock):
    """A wall clock one simulated minute per tick, 2 s into the minute, with a monotonic clock beside it: the
    daemon detects jumps of the wall clock against it (`jump`)."""

    simulated = False

    def __init__(self, minute: int):
        self.minute = minute
        self.offset = 0.0  #: seconds the wall clock is off (jumps)
        self.mono = 1000.0

    def now_seconds(self) -> float:
        return self.minute * 60.0 + 2.0 + self.offset

    def monotonic(self) -> float:
        return self.mono

    def advance(self) -> None:
        self.minute += 1
        self.mono += 60.0

    def jump(self, seconds: float) -> None:
        self.offset += seconds


# -- helpers ------------------------------------------------------------------------------------------------
def group(source: dict, backend: dict | None = None, **kw) -> dict:
    g = {
        "name": "web",
        "policy": "target-tracking",
        "policy_params": TT_PARAMS,
        "min_machines": 1,
        "max_machines": 200,
        "bad_data_ticks_before_fallback": 3,
        "scale_in_stabilization_minutes": 0,
        "source": source,
        "backend": backend or {"kind": "simulated", "initial_machines": 50},
    }
    g.update(kw)
    return g


def prom_source(url: str, timeout: float = 2.0) -> dict:
    return {"kind": "prometheus", "url": url, "query": LOAD_QUERY, "timeout_seconds": timeout}


def daemon(tmp_path, groups: list[dict], clock, journal: str = "j.sqlite", **kw) -> Daemon:
    cfg = DaemonConfig(interval_seconds=60, journal_path=tmp_path / journal, groups=groups, **kw)
    d = Daemon(cfg, CollectorRegistry(), clock=clock)
    d.backfill()
    return d


def metric(d: Daemon, name: str, **labels) -> float:
    v = d.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def records(caplog, msg: str, level: int | None = None) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == msg and (level is None or r.levelno == level)]


def run_streak(d: Daemon, ticks: int) -> list[str]:
    return [d.run_tick() for _ in range(ticks)]


def assert_never_scaled_in(rows: list[dict]) -> None:
    for r in rows:
        assert r["final"] is None or r["final"] >= r["desired_before"], r


# -- Prometheus: slow, empty, NaN, garbage, HTTP error ------------------------------------------------------
@pytest.mark.parametrize(
    "mode, status", [("slow", "error"), ("empty", "empty"), ("nan", "nan"), ("garbage", "error"), ("http500", "error")]
)
def test_prometheus_fault_holds_counts_and_logs_once(tmp_path, prom_proxy: PromProxy, caplog, mode, status):
    caplog.set_level(logging.INFO)
    start = now_minute() - 300
    d = daemon(tmp_path, [group(prom_source(prom_proxy.url, timeout=0.5))], StepClock(start))
    assert d.batches[0].builder.count[0] > 200  # history backfilled through the proxy from the real server
    assert d.run_tick() == "ok"  # 50 machines for ~20 worth of load: the policy scales in
    before = read_decisions(tmp_path / "j.sqlite")[-1]
    assert before["final"] < before["desired_before"]

    prom_proxy.mode, prom_proxy.delay = mode, 4.0
    t0 = time.monotonic()
    assert run_streak(d, 5) == ["partial"] * 5  # the daemon goes on
    if mode == "slow":
        # each tick bounded by the source's 0.5 s timeout, not the proxy's 4 s (5 ticks waiting would be 20 s);
        # the slack is generous for a busy machine
        assert time.monotonic() - t0 < 5 * 0.5 + 10.0
    prom_proxy.mode = "pass"
    assert run_streak(d, 3) == ["ok"] * 3
    d.close()

    rows = read_decisions(tmp_path / "j.sqlite")
    bad, after = rows[1:6], rows[6:]
    assert [r["data_status"] for r in bad] == [status] * 5
    assert [r["action"] for r in bad[:2]] == ["hold", "hold"]  # then the fallback rule on the last good data
    assert {r["action"] for r in bad[2:]} == {"fallback"} and bad[2]["guards"][0] == "fallback:bad_data"
    assert_never_scaled_in(bad)
    assert any("bad-data-no-scale-in" in r["guards"] for r in bad[2:])  # the fallback wanted to scale in
    assert all(r["load_tpm"] is None for r in bad)  # never a silent zero
    assert after[0]["data_status"] == "ok" and after[0]["final"] < after[0]["desired_before"]  # scales in again
    assert metric(d, "fleetpilot_source_errors_total", group="web", kind=status) == 5
    assert metric(d, "fleetpilot_fallbacks_total", group="web", cause="bad_data") == 3
    assert metric(d, "fleetpilot_ticks_total", outcome="error") == 0
    assert len(records(caplog, "bad load reading", logging.WARNING)) == 1  # once per streak
    (end,) = records(caplog, "load reading good again")
    assert end.bad_ticks == 5 and end.kind == status


def test_prometheus_stopped(tmp_path, prometheus_factory, load_exporter, caplog):
    caplog.set_level(logging.INFO)
    server = prometheus_factory([load_exporter.target])
    d = daemon(tmp_path, [group(prom_source(server.url, timeout=1.0))], StepClock(now_minute() - 100))
    assert run_streak(d, 2) == ["ok", "ok"]
    server.stop()
    assert run_streak(d, 6) == ["partial"] * 6
    d.close()
    rows = read_decisions(tmp_path / "j.sqlite")
    assert [r["data_status"] for r in rows] == ["ok"] * 2 + ["error"] * 6
    assert_never_scaled_in(rows[2:])
    assert metric(d, "fleetpilot_source_errors_total", group="web", kind="error") == 6
    (rec,) = records(caplog, "bad load reading", logging.WARNING)
    assert "cannot reach the server" in rec.error
    assert d.healthz()[0] and d.readyz()[0]  # alive and ready: it holds, it does not die


def test_distinct_faults_are_distinct_streaks(tmp_path, prom_proxy: PromProxy, caplog):
    """A streak that changes kind (empty -> NaN) is logged again; the same kind is not."""
    caplog.set_level(logging.INFO)
    d = daemon(tmp_path, [group(prom_source(prom_proxy.url))], StepClock(now_minute() - 300))
    for mode, ticks in (("pass", 1), ("empty", 3), ("nan", 3), ("empty", 2), ("pass", 2)):
        prom_proxy.mode = mode
        run_streak(d, ticks)
    d.close()
    assert [r.status for r in records(caplog, "bad load reading", logging.WARNING)] == ["empty", "nan", "empty"]
    assert len(records(caplog, "load reading good again")) == 1


# -- CloudWatch throttling ----------------------------------------------------------------------------------
def test_cloudwatch_throttling(tmp_path, aws: MotoAws, fault_proxy, caplog):
    caplog.set_level(logging.INFO)
    now = now_minute()
    dims = {"Service": f"reliability-{now}-{id(tmp_path)}"}
    for m in range(now - 60, now):
        aws.put_load("Fleetpilot/Reliability", "Transactions", dims, m, [3000.0])
    proxy = fault_proxy()
    source = {
        "kind": "cloudwatch",
        "namespace": "Fleetpilot/Reliability",
        "metric_name": "Transactions",
        "dimensions": dims,
        "region": aws.region,
        "endpoint_url": proxy.url,
        "timeout_seconds": 1,
    }
    d = daemon(tmp_path, [group(source)], StepClock(now - 30))
    assert d.run_tick() == "ok"
    proxy.add(Fault("GetMetricData", "Throttling", times=-1, message="Rate exceeded"))
    assert run_streak(d, 4) == ["partial"] * 4
    proxy.faults.clear()
    assert d.run_tick() == "ok"
    d.close()
    rows = read_decisions(tmp_path / "j.sqlite")
    assert [r["data_status"] for r in rows] == ["ok"] + ["error"] * 4 + ["ok"]
    assert_never_scaled_in(rows[1:5])
    assert rows[5]["final"] < rows[5]["desired_before"]
    assert metric(d, "fleetpilot_source_errors_total", group="web", kind="error") == 4
    (rec,) = records(caplog, "bad load reading", logging.WARNING)
    assert "Throttling: Rate exceeded" in rec.error


# -- EC2 Auto Scaling API errors ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "operation, code, status",
    [
        ("DescribeAutoScalingGroups", "Throttling", 400),
        ("SetDesiredCapacity", "Throttling", 400),
        ("SetDesiredCapacity", "ScalingActivityInProgress", 400),
        ("SetDesiredCapacity", "ValidationError", 400),
        ("DescribeAutoScalingGroups", "ServiceUnavailable", 503),
    ],
)
def test_auto_scaling_api_errors(
    tmp_path, prometheus_server, aws: MotoAws, fault_proxy, caplog, operation, code, status
):
    caplog.set_level(logging.INFO)
    name = aws.create_group(min_size=1, max_size=60, desired=50)
    proxy = fault_proxy()
    backend = {
        "kind": "ec2-asg",
        "group_name": name,
        "region": aws.region,
        "endpoint_url": proxy.url,
        "max_retries": 2,
        "retry_base_seconds": 0.01,
    }
    d = daemon(
        tmp_path, [group(prom_source(prometheus_server.url), backend, max_machines=60)], StepClock(now_minute() - 300)
    )
    assert d.run_tick() == "ok"
    desired = aws.group(name)["DesiredCapacity"]
    assert desired == 40  # scaled in by the step limit
    proxy.add(Fault(operation, code, times=-1, status=status))
    assert run_streak(d, 4) == ["partial"] * 4
    assert aws.group(name)["DesiredCapacity"] == desired  # nothing was written while the API failed
    proxy.faults.clear()
    assert d.run_tick() == "ok"
    d.close()
    rows = read_decisions(tmp_path / "j.sqlite")
    assert [r["outcome"] for r in rows[1:5]] == ["error"] * 4 and rows[5]["outcome"] == "written"
    if operation == "DescribeAutoScalingGroups":
        assert all(r["guards"] == ["hold:backend-error"] and r["final"] is None for r in rows[1:5])
    assert aws.group(name)["DesiredCapacity"] == rows[5]["final"] < desired
    assert metric(d, "fleetpilot_backend_errors_total", group="web") == 4
    retried = code != "ValidationError"
    assert proxy.count(operation) >= 4 * (3 if retried else 1)  # busy/throttled retried, validation not
    bad = records(
        caplog, "backend read failed" if operation.startswith("Describe") else "backend write failed", logging.WARNING
    )
    assert len(bad) == 1 and code in bad[0].error
    assert len(records(caplog, "backend good again")) == 1
    assert not [r for r in caplog.records if "retry" in r.getMessage() and r.levelno >= logging.INFO]


def test_auto_scaling_endpoint_down(tmp_path, prometheus_server, aws: MotoAws, unused_url, caplog):
    caplog.set_level(logging.INFO)
    backend = {
        "kind": "ec2-asg",
        "group_name": "fleetpilot-gone",
        "region": aws.region,
        "endpoint_url": unused_url,
        "max_retries": 1,
        "retry_base_seconds": 0.01,
    }
    d = daemon(tmp_path, [group(prom_source(prometheus_server.url), backend)], StepClock(now_minute() - 300))
    assert run_streak(d, 3) == ["partial"] * 3
    d.close()
    rows = read_decisions(tmp_path / "j.sqlite")
    assert [(r["outcome"], r["final"]) for r in rows] == [("error", None)] * 3
    assert metric(d, "fleetpilot_backend_errors_total", group="web") == 3
    (rec,) = records(caplog, "backend read failed", logging.WARNING)
    assert "EndpointConnectionError" in rec.error


# -- the model: exception, NaN ------------------------------------------------------------------------------
class Faulty(Policy):
    """A policy that decides like target tracking until told to raise or answer NaN."""

    name = "faulty"

    def __init__(self, inner):
        self.inner, self.how = inner, "ok"

    def reset(self, n):
        self.inner.reset(n)

    def decide(self, obs):
        if self.how == "raise":
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code")
        out = self.inner.decide(obs)
        if self.how == "nan":
            return PolicyOutput(np.full(obs.n, np.nan), out.raw)
        return out


@pytest.mark.parametrize("how, cause", [("raise", "model_error"), ("nan", "non_finite")])
def test_model_failure_streak_uses_the_fallback(tmp_path, caplog, how, cause):
    caplog.set_level(logging.INFO)
    cfg = DaemonConfig(
        interval_seconds=0.01,
        journal_path=tmp_path / "j.sqlite",
        groups=[group({"kind": "simulator", "seed": 1}, {"kind": "simulated", "seed": 1})],
    )
    policy = Faulty(make_policy("target-tracking", TT_PARAMS))
    d = Daemon(cfg, CollectorRegistry(), policies={"target-tracking": policy})
    d.backfill()
    assert run_streak(d, 3) == ["ok"] * 3
    policy.how = how
    assert run_streak(d, 6) == ["partial"] * 6
    policy.how = "ok"
    assert run_streak(d, 2) == ["ok"] * 2
    d.close()
    rows = read_decisions(tmp_path / "j.sqlite")
    assert all(
        r["action"] == "fallback" and r["guards"][0] == f"fallback:{cause}" and r["final"] is not None
        for r in rows[3:9]
    )
    assert {r["action"] for r in rows[9:]} == {"policy"}
    assert metric(d, "fleetpilot_fallbacks_total", group="web", cause=cause) == 6
    failed = [r for r in caplog.records if r.getMessage().startswith("policy ") and r.levelno == logging.ERROR]
    assert len(failed) == 1
    assert len(records(caplog, "policy output good again")) == 1


# -- the wall clock jumping ---------------------------------------------------------------------------------
def test_wall_clock_jumps_forward(tmp_path, prometheus_server, caplog):
    """Three groups, each its own query (the load plus 0, 1000 and 2000): after the jump each group's gap is read
    from its own source (through the reader pool), not filled by holding the last value."""
    caplog.set_level(logging.INFO)
    clock = StepClock(now_minute() - 600)
    groups = [
        group({**prom_source(prometheus_server.url), "query": f"{LOAD_QUERY} + {1000 * i}"}, name=name)
        for i, name in enumerate(("web", "api", "shop"))
    ]
    d = daemon(tmp_path, groups, clock)
    run_streak(d, 3)
    clock.jump(3 * 3600)  # an NTP step of +3 h between two ticks
    assert run_streak(d, 3) == ["ok"] * 3
    d.close()
    assert metric(d, "fleetpilot_clock_jumps_total", direction="forward") == 1
    assert metric(d, "fleetpilot_clock_jumps_total", direction="backward") == 0
    assert len(records(caplog, "wall clock jumped", logging.WARNING)) == 1
    # the three hours the daemon did not see were read from the sources, not filled by holding the last value
    (b,) = d.batches
    obs = b.builder.observation()
    for g in b.groups:
        last = int(obs.minute[g.row])
        got = [obs.history.lag(k)[g.row] for k in range(0, 200)]
        offset = 1000 * ("web", "api", "shop").index(g.name)
        assert got == [load_at(last - k) + offset for k in range(0, 200)], g.name


def test_wall_clock_jumps_backward(tmp_path, prometheus_server, caplog):
    caplog.set_level(logging.INFO)
    clock = StepClock(now_minute() - 600)
    d = daemon(tmp_path, [group(prom_source(prometheus_server.url), scale_in_stabilization_minutes=5)], clock)
    assert run_streak(d, 2) == ["ok", "ok"]
    clock.jump(-30 * 60)  # back 30 minutes: the source now answers for minutes the daemon has already seen
    assert run_streak(d, 8) == ["partial"] * 8
    d.close()
    rows = read_decisions(tmp_path / "j.sqlite")
    assert [r["data_status"] for r in rows[2:]] == ["repeat"] * 8
    assert_never_scaled_in(rows[2:])
    assert metric(d, "fleetpilot_clock_jumps_total", direction="backward") == 1
    assert metric(d, "fleetpilot_source_errors_total", group="web", kind="repeat") == 8
    assert len(records(caplog, "wall clock jumped", logging.WARNING)) == 1
    assert len(records(caplog, "bad load reading", logging.WARNING)) == 1
    # the history is the one seen before the jump: nothing older was mixed into it
    assert int(d.batches[0].builder.minute[0]) == rows[1]["load_minute"]
