"""AWS reads in batches (controller.aws_batch): 1,000 CloudWatch + Auto Scaling groups against moto in server
mode, every call counted by the fault proxy in front of it. One tick reads with at most 10 + 2 calls
(DescribeAutoScalingGroups in pages of 100 names, GetMetricData with 500 queries a call) and writes once per
changed group; a missing group gets its own backend error; throttling is retried with a shared backoff."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from fleetpilot.controller import aws_batch
from fleetpilot.controller.config import DaemonConfig
from fleetpilot.controller.daemon import Daemon
from fleetpilot.controller.journal import read_decisions
from tests.real_servers import Fault, FaultProxy, MotoAws, now_minute

N_GROUPS = 1000
NAMESPACE = "Fleetpilot/Batch"
METRIC = "Transactions"
TT_PARAMS = {"target_utilization": 0.65, "scale_in_tolerance": 0.1, "scale_in_cooldown_minutes": 0}


def load_of(i: int) -> float:
    """Group i's load: most groups want the 2 machines they have (unchanged); one in 50 wants more (3,000 tpm:
    16 machines, 12 after the step limit), one in 50 a few more (900 tpm: 5). moto launches instances on every
    write, slowly: few writes keep the test short."""
    return 3000.0 if i % 50 == 0 else 900.0 if i % 50 == 25 else 300.0


class Fleet:
    def __init__(self, aws: MotoAws, names: list[str], services: list[str], minute: int, setup_s: float):
        self.aws, self.names, self.services, self.minute, self.setup_s = aws, names, services, minute, setup_s


@pytest.fixture(scope="module")
def fleet(moto_server: MotoAws) -> Fleet:
    """1,000 Auto Scaling groups (desired 2, min 1, max 20) sharing one launch template, and one CloudWatch
    metric per group with a datapoint in each minute from 3 minutes ago to 20 minutes ahead (the tests that
    run later still find a fresh one). Created once for the module."""
    aws = moto_server
    t0 = time.perf_counter()
    run = uuid.uuid4().hex[:6]
    template = f"batch-{run}-lt"
    aws.client("ec2").create_launch_template(
        LaunchTemplateName=template, LaunchTemplateData={"ImageId": aws.image_id(), "InstanceType": "t3.micro"}
    )
    asg = aws.client("autoscaling")
    names = [f"batch-{run}-{i:04d}" for i in range(N_GROUPS)]
    for name in names:
        asg.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
            MinSize=1,
            MaxSize=20,
            DesiredCapacity=2,
            AvailabilityZones=[f"{aws.region}a"],
        )
    services = [f"svc-{run}-{i:04d}" for i in range(N_GROUPS)]
    minute = now_minute()
    cw = aws.client("cloudwatch")
    data = [
        {
            "MetricName": METRIC,
            "Dimensions": [{"Name": "Service", "Value": svc}],
            "Timestamp": _ts(m),
            "Value": load_of(i),
        }
        for i, svc in enumerate(services)
        for m in range(minute - 3, minute + 20)
    ]
    for k in range(0, len(data), 1000):
        cw.put_metric_data(Namespace=NAMESPACE, MetricData=data[k : k + 1000])
    return Fleet(aws, names, services, minute, time.perf_counter() - t0)


def _ts(minute: int):
    import datetime as dt

    return dt.datetime.fromtimestamp(minute * 60 + 10, tz=dt.UTC)


@pytest.fixture
def proxy(aws: MotoAws) -> Iterator[FaultProxy]:
    p = FaultProxy(upstream=aws.endpoint_url).start()
    try:
        yield p
    finally:
        p.close()


def _config(tmp_path, fleet: Fleet, endpoint: str, names: list[str], **backend) -> DaemonConfig:
    return DaemonConfig(
        interval_seconds=60,
        journal_path=tmp_path / "j.sqlite",
        groups=[
            {
                "name": f"g{i:04d}",
                "policy": "target-tracking",
                "policy_params": TT_PARAMS,
                "min_machines": 1,
                "max_machines": 20,
                "scale_in_stabilization_minutes": 0,
                "block_scale_in_while_warming": False,
                "source": {
                    "kind": "cloudwatch",
                    "namespace": NAMESPACE,
                    "metric_name": METRIC,
                    "dimensions": {"Service": fleet.services[i]},
                    "region": fleet.aws.region,
                    "endpoint_url": endpoint,
                },
                "backend": {
                    "kind": "ec2-asg",
                    "group_name": name,
                    "region": fleet.aws.region,
                    "endpoint_url": endpoint,
                    "max_retries": 3,
                    "retry_base_seconds": 0.01,
                    **backend,
                },
            }
            for i, name in enumerate(names)
        ],
    )


def _reads(proxy: FaultProxy) -> tuple[int, int]:
    return proxy.count("DescribeAutoScalingGroups"), proxy.count("GetMetricData")


def test_one_tick_of_1000_groups_reads_in_12_calls_and_writes_once_per_changed_group(tmp_path, fleet, proxy):
    print(f"setup of {N_GROUPS} groups in moto: {fleet.setup_s:.1f} s")
    # a fresh run of groups for this test: the writes of another test do not change what is "changed" here
    t0 = time.perf_counter()
    daemon = Daemon(_config(tmp_path, fleet, proxy.url, fleet.names), CollectorRegistry())
    print(f"daemon of {N_GROUPS} AWS groups made in {time.perf_counter() - t0:.1f} s")
    try:
        proxy.operations.clear()
        t0 = time.perf_counter()
        assert daemon.run_tick() == "ok"
        tick_s = time.perf_counter() - t0
    finally:
        daemon.close()
    describes, metric_reads = _reads(proxy)
    writes = proxy.count("SetDesiredCapacity")
    rows = read_decisions(tmp_path / "j.sqlite", last=N_GROUPS)
    print(
        f"one tick: {describes} DescribeAutoScalingGroups, {metric_reads} GetMetricData, {writes} writes, {tick_s:.1f} s"
    )
    assert describes == 10 and metric_reads == 2  # 1,000 names / 100, 1,000 queries / 500
    assert len(rows) == N_GROUPS and all(r["data_status"] == "ok" for r in rows)
    for i, r in enumerate(rows):  # every group got its own load
        assert r["load_tpm"] == load_of(int(r["group_name"][1:])), (i, r)
    written = [r for r in rows if r["outcome"] == "written"]
    changed = [r for r in rows if r["final"] != r["desired_before"]]
    assert writes == len(written) == len(changed)
    assert 0 < len(written) < N_GROUPS and any(r["outcome"] == "unchanged" for r in rows)
    assert set(proxy.operations) == {"DescribeAutoScalingGroups", "GetMetricData", "SetDesiredCapacity"}
    assert {int(r["group_name"][1:]) % 50 for r in written} == {0, 25}
    for r in written:  # the writes reached the groups; then back to 2 for the other tests
        i = int(r["group_name"][1:])
        assert fleet.aws.group(fleet.names[i])["DesiredCapacity"] == r["final"]
        fleet.aws.client("autoscaling").set_desired_capacity(AutoScalingGroupName=fleet.names[i], DesiredCapacity=2)


def test_a_missing_group_gets_its_own_backend_error_the_others_are_written(tmp_path, fleet, proxy):
    names = fleet.names[:250]
    names[137] = f"no-such-group-{uuid.uuid4().hex[:6]}"
    daemon = Daemon(_config(tmp_path, fleet, proxy.url, names).with_dry_run(True), CollectorRegistry())
    try:
        proxy.operations.clear()
        assert daemon.run_tick() == "partial"
    finally:
        daemon.close()
    assert _reads(proxy) == (3, 1)
    rows = {r["group_name"]: r for r in read_decisions(tmp_path / "j.sqlite", last=1000)}
    bad = rows.pop("g0137")
    assert bad["outcome"] == "error" and bad["guards"] == ["hold:backend-error"]
    assert all(r["outcome"] in ("dry-run", "unchanged") and r["active"] is not None for r in rows.values())
    assert sum(r["outcome"] == "dry-run" for r in rows.values()) == 10  # 249 groups, 1 in 25 changed
    assert daemon.registry.get_sample_value("fleetpilot_backend_errors_total", {"group": "g0137"}) == 1
    assert daemon.registry.get_sample_value("fleetpilot_backend_errors_total", {"group": "g0000"}) == 0


def test_a_metric_without_data_is_that_groups_empty_reading(tmp_path, fleet, proxy):
    cfg = _config(tmp_path, fleet, proxy.url, fleet.names[:20]).with_dry_run(True)
    cfg.groups[7].source.dimensions = {"Service": "never-published"}
    daemon = Daemon(cfg, CollectorRegistry())
    try:
        proxy.operations.clear()
        assert daemon.run_tick() == "partial"
    finally:
        daemon.close()
    assert _reads(proxy) == (1, 1)
    rows = {r["group_name"]: r for r in read_decisions(tmp_path / "j.sqlite", last=100)}
    assert rows.pop("g0007")["data_status"] == "empty"
    assert all(r["data_status"] == "ok" for r in rows.values())


def test_throttled_describe_is_retried_with_one_shared_backoff(tmp_path, fleet, proxy):
    proxy.add(Fault("DescribeAutoScalingGroups", "Throttling", times=2))
    proxy.add(Fault("GetMetricData", "Throttling", times=1))
    daemon = Daemon(_config(tmp_path, fleet, proxy.url, fleet.names[:300]).with_dry_run(True), CollectorRegistry())
    try:
        proxy.operations.clear()
        assert daemon.run_tick() == "ok"
    finally:
        daemon.close()
    assert _reads(proxy) == (3 + 2, 1 + 1)  # 3 pages + 2 throttled attempts; 1 call + 1 throttled
    rows = read_decisions(tmp_path / "j.sqlite", last=1000)
    assert len(rows) == 300 and all(r["data_status"] == "ok" and r["active"] is not None for r in rows)
    backoff = aws_batch.shared_backoff(("autoscaling", fleet.aws.region, proxy.url))
    assert backoff.throttled == 2


def test_throttling_that_lasts_fails_every_group_without_hammering_the_endpoint(tmp_path, fleet, proxy):
    proxy.add(Fault("DescribeAutoScalingGroups", "Throttling", times=-1))
    daemon = Daemon(_config(tmp_path, fleet, proxy.url, fleet.names[:300], max_retries=2), CollectorRegistry())
    try:
        proxy.operations.clear()
        assert daemon.run_tick() == "partial"
    finally:
        daemon.close()
    # the first page's 3 attempts; the other pages of that endpoint are not tried again this tick
    assert proxy.count("DescribeAutoScalingGroups") == 3
    assert proxy.count("SetDesiredCapacity") == 0
    rows = read_decisions(tmp_path / "j.sqlite", last=1000)
    assert len(rows) == 300 and all(r["outcome"] == "error" for r in rows)


def test_a_batch_refused_for_what_one_group_may_cause_falls_back_to_one_call_per_group(tmp_path, fleet, proxy):
    proxy.add(Fault("GetMetricData", "ValidationError", times=1))
    proxy.add(Fault("DescribeAutoScalingGroups", "ValidationError", times=1))
    daemon = Daemon(_config(tmp_path, fleet, proxy.url, fleet.names[:20]).with_dry_run(True), CollectorRegistry())
    try:
        proxy.operations.clear()
        assert daemon.run_tick() == "ok"
    finally:
        daemon.close()
    assert _reads(proxy) == (1 + 20, 1 + 20)  # the refused batch, then each group on its own
    rows = read_decisions(tmp_path / "j.sqlite", last=100)
    assert len(rows) == 20 and all(r["data_status"] == "ok" and r["active"] is not None for r in rows)
