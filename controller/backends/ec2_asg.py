"""The EC2 Auto Scaling backend: read a group and set its desired capacity through boto3.

boto3 is imported only here. Credentials come from boto3's default chain (environment, shared config,
container / instance role, IRSA web identity); `endpoint_url` points the client elsewhere (tests: moto).

Reading (`DescribeAutoScalingGroups`): desired, min and max capacity, and the group's instances counted by
lifecycle state:

| lifecycle state                              | counted as |
|----------------------------------------------|------------|
| `InService`                                  | active     |
| `Pending`, `Pending:Wait`, `Pending:Proceed` | warming    |
| anything else (`Terminating*`, `Terminated`, `Detaching`, `Detached`, `EnteringStandby`, `Standby`, | ignored |
| `Quarantined`, ...)                          |            |

Warm-pool instances are not in the group's instance list and are not counted.

Writing (`SetDesiredCapacity`, `HonorCooldown=False`): absolute, so repeating it is harmless; skipped when the
group's desired capacity already equals the target; the target is clamped to the group's own MinSize and
MaxSize (read just before), so fleetpilot never asks for a size the group refuses.

Retries: botocore's own retries are off; this module retries `ScalingActivityInProgress`,
`ResourceContention`, throttling, 5xx and connection failures with exponential backoff and jitter, at most
`max_retries` times, then raises BackendError. `ValidationError`, access errors, an unknown group and
anything else fail at once.
"""

from __future__ import annotations

import logging
import operator
import random
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from fleetpilot.controller.aws_session import client as aws_client
from fleetpilot.controller.backends.base import Backend, BackendError, GroupState

log = logging.getLogger(__name__)

#: The AWS API actions this backend calls (the IAM policy in docs/aws.md grants exactly these).
AWS_ACTIONS: tuple[str, ...] = ("autoscaling:DescribeAutoScalingGroups", "autoscaling:SetDesiredCapacity")

#: Lifecycle states counted as active machines.
ACTIVE_STATES: frozenset[str] = frozenset({"InService"})

#: Lifecycle states counted as warming machines (launched, not yet in service).
WARMING_STATES: frozenset[str] = frozenset({"Pending", "Pending:Wait", "Pending:Proceed"})

#: Error codes retried with backoff: the group is busy, or the API is throttling or briefly unavailable
#: (codes from the Auto Scaling API reference and botocore's retry configuration).
RETRYABLE_ERROR_CODES: frozenset[str] = frozenset(
    {
        "ScalingActivityInProgress",
        "ResourceContention",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "PriorRequestNotComplete",
        "InternalFailure",
        "InternalError",
        "ServiceUnavailable",
    }
)

#: Upper bound of one backoff sleep, seconds.
RETRY_MAX_SLEEP_SECONDS = 20.0


def count_instances(instances: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """(active, warming) machines among DescribeAutoScalingGroups' `Instances` (see the module table)."""
    active = warming = 0
    for instance in instances:
        state = instance.get("LifecycleState", "")
        if state in ACTIVE_STATES:
            active += 1
        elif state in WARMING_STATES:
            warming += 1
    return active, warming


def backoff_seconds(
    attempt: int, base_seconds: float, rng: random.Random, max_seconds: float = RETRY_MAX_SLEEP_SECONDS
) -> float:
    """Sleep before retry number `attempt` (0-based): exponential, capped, with "equal jitter" (uniform
    in [half, whole] of the exponential step, so retries of many daemons spread out yet still grow)."""
    step = min(max_seconds, base_seconds * (2**attempt))
    return rng.uniform(step / 2, step)


class Ec2AsgBackend(Backend):
    """One EC2 Auto Scaling group.

    `max_retries` is the number of retries after the first attempt of each API call; `retry_base_seconds` the
    first backoff step (doubling each retry, capped at RETRY_MAX_SLEEP_SECONDS); `timeout_seconds` bounds
    connecting and each read of one attempt.
    """

    def __init__(
        self,
        group_name: str,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        max_retries: int = 5,
        retry_base_seconds: float = 0.5,
        timeout_seconds: float = 10.0,
    ) -> None:
        if not group_name:
            raise ValueError("group_name must be non-empty")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        if retry_base_seconds < 0:
            raise ValueError(f"retry_base_seconds must be >= 0, got {retry_base_seconds!r}")
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds!r}")
        self.group_name = group_name
        self.region = region
        self.endpoint_url = endpoint_url
        self.max_retries = int(max_retries)
        self.retry_base_seconds = float(retry_base_seconds)
        self.timeout_seconds = float(timeout_seconds)
        self._rng = random.Random()
        self._interrupt = threading.Event()  #: set by interrupt(): no more retries (shutdown)
        self._client = aws_client(
            "autoscaling",
            region,
            endpoint_url,
            connect_timeout=self.timeout_seconds,
            read_timeout=self.timeout_seconds,
            retries={"mode": "standard", "total_max_attempts": 1},  # this class owns the retry policy
            user_agent_extra="fleetpilot",
        )
        #: this tick's description from `controller.aws_batch` (the group, or why it cannot be read)
        self._prefetched: dict[str, Any] | BackendError | None = None

    def __repr__(self) -> str:
        return f"Ec2AsgBackend(group_name={self.group_name!r}, region={self.region!r})"

    # -- the Backend protocol ------------------------------------------------------------------------

    def read(self) -> GroupState:
        """The group now: desired, its own min and max, active (InService) and warming (Pending*) machines."""
        group = self._describe()
        active, warming = count_instances(group.get("Instances") or [])
        return GroupState(
            desired=int(group["DesiredCapacity"]),
            min_size=int(group["MinSize"]),
            max_size=int(group["MaxSize"]),
            active=active,
            warming=warming,
        )

    def set_desired(self, capacity: int) -> None:
        """Set the desired capacity to `capacity` clamped to the group's MinSize..MaxSize; no call when the
        group already wants that many."""
        requested = operator.index(capacity)
        group = self._describe()
        min_size, max_size = int(group["MinSize"]), int(group["MaxSize"])
        target = max(min_size, min(max_size, requested))
        if target != requested:
            log.info(
                "group %s: desired %d clamped to %d by the group's own min %d / max %d",
                self.group_name,
                requested,
                target,
                min_size,
                max_size,
            )
        if int(group["DesiredCapacity"]) == target:
            log.debug("group %s: desired already %d, no write", self.group_name, target)
            return
        self._prefetched = None  # the group changes: a later read this tick asks again
        self._call(
            "set_desired_capacity", AutoScalingGroupName=self.group_name, DesiredCapacity=target, HonorCooldown=False
        )

    def interrupt(self) -> None:
        """Stop retrying (the daemon is shutting down): a call in its backoff fails at once."""
        self._interrupt.set()

    def close(self) -> None:
        """Nothing to release: the client is shared with the other groups (controller.aws_session)."""

    # -- batched reads (controller.aws_batch) ----------------------------------------------------------

    def batch_key(self) -> tuple[str, str, str | None] | None:
        """Backends with the same key are described together (see Backend.batch_key)."""
        return ("autoscaling", self.region, self.endpoint_url)

    @property
    def client(self) -> Any:
        return self._client

    @property
    def interrupted(self) -> threading.Event:
        return self._interrupt

    def clear_prefetch(self) -> None:
        self._prefetched = None

    def set_prefetch(self, got: dict[str, Any] | BackendError) -> None:
        """This tick's description of the group (from a batched DescribeAutoScalingGroups), or its error;
        `read` and `set_desired` use it instead of their own call until the next prefetch."""
        self._prefetched = got

    def not_found(self) -> str:
        return f"Auto Scaling group {self.group_name!r} not found in region {self.region}"

    # -- internals -----------------------------------------------------------------------------------

    def _describe(self) -> dict[str, Any]:
        got = self._prefetched
        if isinstance(got, BackendError):
            raise got
        if got is not None:
            return got
        answer = self._call("describe_auto_scaling_groups", AutoScalingGroupNames=[self.group_name])
        groups = [g for g in answer.get("AutoScalingGroups") or [] if g.get("AutoScalingGroupName") == self.group_name]
        if not groups:
            raise BackendError(self.not_found())
        return groups[0]

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One API call with this class's retry policy; every failure ends as one BackendError line."""
        method = getattr(self._client, operation)
        what = f"{self._client.meta.method_to_api_mapping.get(operation, operation)} on group {self.group_name!r}"
        last_error = ""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return method(**kwargs)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code") or "")
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                last_error = f"{code or status}: {' '.join(str(error.get('Message', '')).split())}"
                if code not in RETRYABLE_ERROR_CODES and status < 500:
                    raise BackendError(f"{what} failed: {last_error}") from None
            except (BotoConnectionError, HTTPClientError) as exc:
                last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            except BotoCoreError as exc:
                raise BackendError(f"{what} failed: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
            if attempt + 1 < attempts:
                delay = backoff_seconds(attempt, self.retry_base_seconds, self._rng)
                # DEBUG: the daemon logs a failing group once per streak, not every attempt of every tick
                log.debug("%s: %s; retry %d of %d in %.2f s", what, last_error, attempt + 1, self.max_retries, delay)
                if self._interrupt.wait(delay):
                    raise BackendError(
                        f"{what} failed after {attempt + 1} attempts (retries stopped: shutting down): {last_error}"
                    )
        raise BackendError(f"{what} failed after {attempts} attempts: {last_error}")
