"""Every parameter of the fleet and load simulation, with the seed's defaults.

The seed is the simulator of the Amazon SageMaker RL "predictive auto scaling" example
(`SimpleScalableWebserviceSim` and `LoadSimulator`); each default below names where it comes from.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FleetParams(BaseModel):
    """The fleet and the business objective (seed defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup_minutes: int = Field(
        5, ge=0, le=120, description="minutes from ordering a machine until it serves (seed warmup_latency)"
    )
    capacity_tpm_per_machine: float = Field(
        300.0, gt=0, description="mean transactions per minute one machine serves (seed tpm_per_machine)"
    )
    capacity_sigma_tpm: float = Field(
        30.0,
        ge=0,
        description="std. dev. of per-machine capacity, one draw per minute for the whole fleet (seed tpm_sigma)",
    )
    machine_cost_usd_per_minute: float = Field(
        0.05, ge=0, description="cost of one active machine per minute; warming machines are free (seed machine_cost)"
    )
    revenue_usd_per_1k_transactions: float = Field(
        0.90, ge=0, description="value of a thousand served transactions (seed transaction_val, CPM)"
    )
    downtime_cost_usd_per_minute: float = Field(
        200.0, ge=0, description="penalty for a minute of downtime on top of lost revenue (seed downtime_cost)"
    )
    downtime_served_share: float = Field(
        0.995,
        gt=0,
        le=1,
        description="a minute is down when served/load is below this share (seed downtime_percent 99.5)",
    )
    initial_machines: int = Field(
        50, ge=0, description="active machines at the start of an episode (seed initial_machines)"
    )
    max_load_tpm: float = Field(100_000.0, gt=0, description="load is clipped to this (seed max_tpm)")
    max_machines: int = Field(833, ge=1, description="fleet cap: int(2.5 x max load / tpm per machine) in the seed")
    max_scale_out_per_minute: int = Field(
        10, ge=1, description="machines that may be ordered per minute (seed max_machine_delta)"
    )
    max_scale_in_per_minute: int = Field(
        10, ge=1, description="machines that may be removed per minute (seed max_machine_delta)"
    )
    episode_minutes: int = Field(
        10_000, ge=1, description="minutes per training episode (seed max_time_steps, without its off-by-one)"
    )

    @model_validator(mode="after")
    def _initial_within_cap(self) -> FleetParams:
        if self.initial_machines > self.max_machines:
            raise ValueError(f"initial_machines ({self.initial_machines}) exceeds max_machines ({self.max_machines})")
        return self

    @property
    def max_delta(self) -> int:
        """Largest step either way; the discrete action space is [-max_delta, +max_delta]."""
        return max(self.max_scale_out_per_minute, self.max_scale_in_per_minute)


class SyntheticLoadParams(BaseModel):
    """The seed's `LoadSimulator`: a daily sine x a low-frequency factor x noise, plus decaying spikes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    daily_min_tpm: tuple[float, float] = Field(
        (1000.0, 2000.0), description="uniform range of the daily minimum (seed cyclic_min)"
    )
    daily_span_tpm: tuple[float, float] = Field(
        (5000.0, 7000.0), description="uniform range of max - min (seed cyclic_max)"
    )
    noise_share: tuple[float, float] = Field(
        (0.01, 0.05), description="uniform range of the std. dev. of the per-minute multiplicative noise"
    )
    lf_amplitude: tuple[float, float] = Field(
        (0.1, 0.2), description="uniform range of the low-frequency factor's amplitude"
    )
    lf_period_days: tuple[float, float] = Field(
        (2.0, 5.0), description="uniform range of the low-frequency period in days"
    )
    spike_gap_minutes: tuple[float, float] = Field(
        (100.0, 1000.0), description="uniform range of the quiet time before each spike"
    )
    spike_height_share: tuple[float, float] = Field(
        (0.1, 0.2), description="uniform range of spike height as a share of the daily maximum"
    )
    spike_width_min_minutes: float = Field(
        5.0, ge=0, description="spike decay time = this + lognormal(mu, sigma) minutes"
    )
    spike_width_lognormal: tuple[float, float] = Field(
        (3.0, 2.0), description="(mu, sigma) of the lognormal part of the spike decay time"
    )
    day_minutes: int = Field(1440, ge=1, description="period of the daily cycle")
