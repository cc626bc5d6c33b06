"""Ec2AsgBackend against a moto server over HTTP (and a fault proxy speaking the Auto Scaling error format)."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest

from fleetpilot.controller import lease
from fleetpilot.controller.backends import ec2_asg
from fleetpilot.controller.backends.base import Backend, BackendError, GroupState
from fleetpilot.controller.backends.ec2_asg import Ec2AsgBackend, backoff_seconds, count_instances
from fleetpilot.controller.sources import cloudwatch
from tests.real_servers import Fault, MotoAws

DOCS_AWS = Path(__file__).resolve().parent.parent / "docs" / "aws.md"


def backend_for(aws: MotoAws, group: str, endpoint_url: str | None = None, **kwargs) -> Ec2AsgBackend:
    kwargs.setdefault("retry_base_seconds", 0.01)
    return Ec2AsgBackend(group, region=aws.region, endpoint_url=endpoint_url or aws.endpoint_url, **kwargs)


def test_is_a_backend(aws: MotoAws) -> None:
    assert isinstance(backend_for(aws, "any"), Backend)


def test_groups_with_the_same_settings_share_one_client(aws: MotoAws) -> None:
    """A boto3 client holds about 0.23 MB: one per group was 2.3 GB at 10,000 groups. Groups of one region and
    endpoint with the same timeouts share one (boto3 clients are thread-safe) and still act on their own group."""
    a_name = aws.create_group(min_size=1, max_size=6, desired=2)
    b_name = aws.create_group(min_size=1, max_size=6, desired=3)
    a, b = backend_for(aws, a_name), backend_for(aws, b_name)
    assert a.client is b.client
    assert backend_for(aws, a_name, timeout_seconds=7.5).client is not a.client
    assert backend_for(aws, a_name, endpoint_url=aws.endpoint_url + "/").client is not a.client
    src = [
        cloudwatch.CloudWatchSource("ns", "m", {"g": x}, region=aws.region, endpoint_url=aws.endpoint_url) for x in "ab"
    ]
    assert src[0].client is src[1].client and src[0].client is not a.client
    a.close()  # a group's close leaves the shared client working for the others
    b.set_desired(4)
    assert (a.read().desired, b.read().desired) == (2, 4)
    assert a.client.meta.config.max_pool_connections >= 16  # the daemon's read threads share it


def test_read_reports_desired_min_max_and_instances(aws: MotoAws) -> None:
    group = aws.create_group(min_size=1, max_size=6, desired=3)
    assert backend_for(aws, group).read() == GroupState(desired=3, min_size=1, max_size=6, active=3, warming=0)


def test_set_desired_changes_the_group(aws: MotoAws) -> None:
    group = aws.create_group(min_size=1, max_size=6, desired=2)
    backend = backend_for(aws, group)
    backend.set_desired(5)
    assert aws.group(group)["DesiredCapacity"] == 5
    assert backend.read() == GroupState(desired=5, min_size=1, max_size=6, active=5, warming=0)  # moto: at once
    backend.set_desired(1)
    assert aws.group(group)["DesiredCapacity"] == 1
    backend.close()


@pytest.mark.parametrize(("asked", "written"), [(99, 4), (5, 4), (0, 2), (-3, 2), (3, 3)])
def test_set_desired_is_clamped_to_the_groups_own_min_and_max(aws: MotoAws, asked: int, written: int) -> None:
    group = aws.create_group(min_size=2, max_size=4, desired=2 if written != 2 else 3)
    backend_for(aws, group).set_desired(asked)
    assert aws.group(group)["DesiredCapacity"] == written


def test_set_desired_is_idempotent_and_skips_the_call(aws: MotoAws, fault_proxy) -> None:
    group = aws.create_group(min_size=1, max_size=5, desired=3)
    proxy = fault_proxy()  # forwards everything, counts operations
    backend = backend_for(aws, group, endpoint_url=proxy.url)
    backend.set_desired(3)
    backend.set_desired(3)
    backend.set_desired(99)  # clamped to 5: one write
    backend.set_desired(5)
    assert proxy.count("SetDesiredCapacity") == 1
    assert aws.group(group)["DesiredCapacity"] == 5


def test_standby_instances_are_neither_active_nor_warming(aws: MotoAws) -> None:
    group = aws.create_group(min_size=0, max_size=5, desired=3)
    instance = aws.group(group)["Instances"][0]["InstanceId"]
    aws.client("autoscaling").enter_standby(
        AutoScalingGroupName=group, InstanceIds=[instance], ShouldDecrementDesiredCapacity=True
    )
    state = backend_for(aws, group).read()
    assert (state.desired, state.active, state.warming) == (2, 2, 0)


def test_lifecycle_states_are_counted_as_documented() -> None:
    """moto puts every instance InService at once, so the Pending* states are checked on the pure counter."""
    instances = [
        {"LifecycleState": s}
        for s in [
            "InService",
            "InService",
            "Pending",
            "Pending:Wait",
            "Pending:Proceed",
            "Terminating",
            "Terminating:Wait",
            "Terminating:Proceed",
            "Terminated",
            "Detaching",
            "Detached",
            "EnteringStandby",
            "Standby",
            "Quarantined",
            "Warmed:Pending",
        ]
    ]
    assert count_instances(instances) == (2, 3)
    assert count_instances([]) == (0, 0)


def test_unknown_group_is_an_error_at_once(aws: MotoAws, fault_proxy) -> None:
    proxy = fault_proxy()
    backend = backend_for(aws, "fleetpilot-no-such-group", endpoint_url=proxy.url)
    with pytest.raises(BackendError, match="'fleetpilot-no-such-group' not found in region us-east-1"):
        backend.read()
    with pytest.raises(BackendError, match="not found"):
        backend.set_desired(3)
    assert proxy.operations == ["DescribeAutoScalingGroups", "DescribeAutoScalingGroups"]


def test_busy_and_throttled_calls_are_retried_then_succeed(aws: MotoAws, fault_proxy) -> None:
    group = aws.create_group(min_size=1, max_size=8, desired=2)
    proxy = fault_proxy(
        Fault("DescribeAutoScalingGroups", "Throttling", times=1, message="Rate exceeded"),
        Fault(
            "SetDesiredCapacity",
            "ScalingActivityInProgress",
            times=1,
            message="Scaling activity 1234 is in progress and blocks this action.",
        ),
        Fault(
            "SetDesiredCapacity",
            "ResourceContention",
            times=1,
            message="You already have a pending update to an Auto Scaling resource.",
        ),
        Fault("SetDesiredCapacity", "RequestLimitExceeded", times=1),
        Fault("SetDesiredCapacity", "ServiceUnavailable", times=1, status=503),
    )
    backend_for(aws, group, endpoint_url=proxy.url, max_retries=5).set_desired(7)
    assert proxy.count("DescribeAutoScalingGroups") == 2
    assert proxy.count("SetDesiredCapacity") == 5
    assert aws.group(group)["DesiredCapacity"] == 7


def test_retries_give_up_after_max_retries(aws: MotoAws, fault_proxy) -> None:
    group = aws.create_group(min_size=1, max_size=8, desired=2)
    proxy = fault_proxy(Fault("SetDesiredCapacity", "Throttling", times=-1, message="Rate exceeded"))
    backend = backend_for(aws, group, endpoint_url=proxy.url, max_retries=3)
    with pytest.raises(
        BackendError,
        match=r"SetDesiredCapacity on group .* failed after 4 attempts: "
        r"Throttling: Rate exceeded",
    ):
        backend.set_desired(6)
    assert proxy.count("SetDesiredCapacity") == 4
    assert aws.group(group)["DesiredCapacity"] == 2


@pytest.mark.parametrize("code", ["ValidationError", "AccessDenied"])
def test_validation_and_access_errors_are_not_retried(aws: MotoAws, fault_proxy, code: str) -> None:
    group = aws.create_group(min_size=1, max_size=8, desired=2)
    proxy = fault_proxy(
        Fault(
            "SetDesiredCapacity",
            code,
            times=-1,
            message="New SetDesiredCapacity value 6 is above max value 5 for the AutoScalingGroup.",
        )
    )
    with pytest.raises(BackendError, match=f"SetDesiredCapacity on group .* failed: {code}: New SetDesired"):
        backend_for(aws, group, endpoint_url=proxy.url, max_retries=5).set_desired(6)
    assert proxy.count("SetDesiredCapacity") == 1


def test_endpoint_down_is_an_error_after_retries(aws: MotoAws, unused_url: str) -> None:
    backend = backend_for(aws, "any-group", endpoint_url=unused_url, max_retries=2, timeout_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(
        BackendError, match="DescribeAutoScalingGroups .* failed after 3 attempts: EndpointConnectionError"
    ):
        backend.read()
    # refused at once, 3 attempts with backoff of about 1.5 s: generous for a busy machine, far below a hang
    assert time.monotonic() - started < 15.0


def test_silent_endpoint_times_out_and_is_retried(aws: MotoAws, silent_server: str) -> None:
    backend = backend_for(aws, "any-group", endpoint_url=silent_server, max_retries=1, timeout_seconds=0.3)
    started = time.monotonic()
    with pytest.raises(BackendError, match="failed after 2 attempts: ReadTimeoutError"):
        backend.read()
    # 2 attempts of 0.3 s plus backoff; generous for a busy machine, yet below the 2 x 10 s of the default timeout
    assert time.monotonic() - started < 2 * 0.3 + 8.0


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        step = min(ec2_asg.RETRY_MAX_SLEEP_SECONDS, 0.5 * 2**attempt)
        delays = [backoff_seconds(attempt, 0.5, rng) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert backoff_seconds(30, 0.5, rng) <= ec2_asg.RETRY_MAX_SLEEP_SECONDS


def test_invalid_arguments_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="group_name"):
        Ec2AsgBackend("")
    with pytest.raises(ValueError, match="max_retries"):
        Ec2AsgBackend("g", max_retries=-1)
    with pytest.raises(ValueError, match="timeout_seconds"):
        Ec2AsgBackend("g", timeout_seconds=0)


def test_only_the_documented_actions_are_called(aws: MotoAws) -> None:
    group = aws.create_group(min_size=1, max_size=5, desired=2)
    backend = backend_for(aws, group)
    called: list[str] = []
    backend._client.meta.events.register(
        "before-call.*.*", lambda model, **_: called.append(f"autoscaling:{model.name}")
    )
    backend.read()
    backend.set_desired(4)
    backend.set_desired(4)
    assert set(called) == set(ec2_asg.AWS_ACTIONS)


def _policy_statements() -> list[dict]:
    text = DOCS_AWS.read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    policies = [json.loads(block) for block in blocks if '"Statement"' in block]
    assert len(policies) == 1, "docs/aws.md has exactly one IAM policy"
    return policies[0]["Statement"]


def test_docs_iam_policy_grants_exactly_the_actions_used() -> None:
    statements = _policy_statements()
    granted = set()
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        granted |= set([actions] if isinstance(actions, str) else actions)
    assert granted == set(ec2_asg.AWS_ACTIONS) | set(cloudwatch.AWS_ACTIONS) | set(lease.AWS_ACTIONS)
    assert not any("*" in action for action in granted)
    writes = [s for s in statements if "autoscaling:SetDesiredCapacity" in s["Action"]]
    assert len(writes) == 1 and writes[0]["Resource"] != "*", "the write is scoped to the group's ARN"
    assert writes[0]["Action"] in ("autoscaling:SetDesiredCapacity", ["autoscaling:SetDesiredCapacity"])
