"""The daemon against AWS APIs over real HTTP (moto server): CloudWatch load in, Auto Scaling group out;
dry-run leaves the group untouched, a real run sets its desired capacity."""

from __future__ import annotations

import sys
import uuid

from prometheus_client import CollectorRegistry

from fleetpilot.controller.config import DaemonConfig
from fleetpilot.controller.daemon import Daemon
from fleetpilot.controller.journal import read_decisions
from tests.real_servers import MotoAws, now_minute


def _config(tmp_path, aws: MotoAws, group_name: str, dimensions: dict[str, str], **kw) -> DaemonConfig:
    return DaemonConfig(
        interval_seconds=60,
        journal_path=tmp_path / "j.sqlite",
        groups=[
            {
                "name": "web",
                "policy": "target-tracking",
                "policy_params": {"target_utilization": 0.65},
                "min_machines": 1,
                "max_machines": 20,
                "block_scale_in_while_warming": False,
                "source": {
                    "kind": "cloudwatch",
                    "namespace": "Fleetpilot/Test",
                    "metric_name": "Transactions",
                    "dimensions": dimensions,
                    "region": aws.region,
                    "endpoint_url": aws.endpoint_url,
                },
                "backend": {
                    "kind": "ec2-asg",
                    "group_name": group_name,
                    "region": aws.region,
                    "endpoint_url": aws.endpoint_url,
                    "max_retries": 1,
                    "retry_base_seconds": 0.01,
                },
            }
        ],
        **kw,
    )


def test_cloudwatch_to_asg_dry_run_then_write(tmp_path, aws: MotoAws):
    name = aws.create_group(min_size=1, max_size=20, desired=2)
    dims = {"Service": f"svc-{uuid.uuid4().hex[:6]}"}
    now = now_minute()
    for m in range(now - 30, now):  # 3,000 tpm: target tracking at 0.65 wants 16 machines
        aws.put_load("Fleetpilot/Test", "Transactions", dims, m, [3000.0])

    dry = Daemon(_config(tmp_path, aws, name, dims).with_dry_run(True), CollectorRegistry())
    dry.backfill()
    assert "boto3" in sys.modules
    assert dry.run_tick() == "ok"
    dry.close()
    (r,) = read_decisions(tmp_path / "j.sqlite", "web")
    assert r["data_status"] == "ok" and r["load_tpm"] == 3000.0 and r["policy_desired"] == 16
    assert r["outcome"] == "dry-run" and r["desired_before"] == 2 and r["final"] == min(16, r["active"] + 10)
    assert aws.group(name)["DesiredCapacity"] == 2  # untouched
    assert dry.batches[0].builder.count[0] >= 30  # the history was backfilled from CloudWatch

    live = Daemon(_config(tmp_path, aws, name, dims), CollectorRegistry())
    live.backfill()
    assert live.run_tick() == "ok"
    live.close()
    r = read_decisions(tmp_path / "j.sqlite", "web")[-1]
    assert r["outcome"] == "written"
    assert aws.group(name)["DesiredCapacity"] == r["final"] > 2
