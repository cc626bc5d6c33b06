"""Sources and backends from a group's config. AWS and HTTP implementations are imported only when
configured, so boto3 is loaded only when an AWS kind is used."""

from __future__ import annotations

import os

from fleetpilot.controller.backends.base import Backend
from fleetpilot.controller.config import GroupConfig
from fleetpilot.controller.sources.base import MetricSource
from fleetpilot.sim.params import FleetParams


def make_source(g: GroupConfig) -> MetricSource:
    s = g.source
    if s.kind == "simulator":
        from fleetpilot.controller.sources.simulator import SimulatorSource

        return SimulatorSource(seed=s.seed, minutes=s.minutes, peak_tpm=s.peak_tpm)
    if s.kind == "csv":
        from fleetpilot.controller.sources.csv_replay import CsvReplaySource

        return CsvReplaySource(s.path, peak_tpm=s.peak_tpm, fill_gaps=s.fill_gaps, loop=s.loop)
    if s.kind == "prometheus":
        from fleetpilot.controller.config import read_secret_file
        from fleetpilot.controller.sources.prometheus import PrometheusSource

        token = read_secret_file(s.bearer_token_file, "bearer_token_file") if s.bearer_token_file else None
        basic = None
        if s.basic_auth is not None:
            a = s.basic_auth
            pw = (
                read_secret_file(a.password_file, "basic_auth.password_file")
                if a.password_file
                else os.environ.get(a.password_env or "", "")
            )
            basic = (a.username, pw)
        return PrometheusSource(s.url, s.query, timeout_seconds=s.timeout_seconds, bearer_token=token, basic_auth=basic)
    if s.kind == "cloudwatch":
        from fleetpilot.controller.sources.cloudwatch import CloudWatchSource

        return CloudWatchSource(
            s.namespace,
            s.metric_name,
            dict(s.dimensions),
            statistic=s.statistic,
            region=s.region,
            endpoint_url=s.endpoint_url,
            timeout_seconds=s.timeout_seconds,
        )
    raise ValueError(f"unknown source kind {s.kind!r}")  # unreachable: the config is validated


def fleet_params(g: GroupConfig) -> FleetParams:
    """The simulated group's fleet model: the group's capacity and warm-up, the backend's world settings."""
    b = g.backend
    return FleetParams(
        capacity_tpm_per_machine=g.capacity_tpm_per_machine,
        warmup_minutes=g.warmup_minutes,
        capacity_sigma_tpm=b.capacity_sigma_tpm,
        initial_machines=b.initial_machines,
        max_machines=b.max_machines,
        max_scale_out_per_minute=b.max_scale_out_per_minute,
        max_scale_in_per_minute=b.max_scale_in_per_minute,
    )


def make_backend(g: GroupConfig) -> Backend:
    b = g.backend
    if b.kind == "simulated":
        from fleetpilot.controller.backends.simulated import SimulatedBackend

        return SimulatedBackend(fleet_params(g), seed=b.seed)
    if b.kind == "ec2-asg":
        from fleetpilot.controller.backends.ec2_asg import Ec2AsgBackend

        return Ec2AsgBackend(
            b.group_name,
            region=b.region,
            endpoint_url=b.endpoint_url,
            max_retries=b.max_retries,
            retry_base_seconds=b.retry_base_seconds,
        )
    raise ValueError(f"unknown backend kind {b.kind!r}")  # unreachable: the config is validated
