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


#: A range drawn log-uniformly (both ends > 0).
_LOG = "log-uniform"


class BroadLoadParams(BaseModel):
    """A randomized load generator for training that generalizes: every episode draws its own generator from
    these ranges (uniform unless the description says log-uniform), so no single generator's constants can be
    learned. Load = scale x daily shape x weekday/weekend x trend x slow wander x (1 + spikes), then per-minute
    noise: heavy-tailed multiplicative shocks (Student t) under a Poisson count (together an overdispersed
    count, like a negative binomial), clipped to the fleet's max load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    peak_tpm: tuple[float, float] = Field(
        (300.0, 40_000.0),
        description="log-uniform range of the episode's peak before noise (the maximum of shape x spikes)",
    )
    daily_floor_share: tuple[float, float] = Field(
        (0.0, 0.9), description="uniform range of the daily minimum as a share of the daily maximum (0: idle nights)"
    )
    daily_second_harmonic: tuple[float, float] = Field(
        (0.0, 0.6), description="uniform range of the amplitude of the 12-hour harmonic relative to the daily one"
    )
    daily_sharpness: tuple[float, float] = Field(
        (0.5, 3.0),
        description="log-uniform range of the exponent on the daily shape (above 1: narrow working-hours peaks)",
    )
    weekend_share: tuple[float, float] = Field(
        (0.3, 1.2), description="uniform range of the Saturday and Sunday level relative to weekdays"
    )
    trend_per_day: tuple[float, float] = Field(
        (-0.05, 0.1), description="uniform range of the log growth of the level per day"
    )
    wander_amplitude: tuple[float, float] = Field(
        (0.0, 0.3), description="uniform range of a slow sine factor's amplitude (the seed's low-frequency factor)"
    )
    wander_period_days: tuple[float, float] = Field(
        (1.5, 8.0), description="uniform range of that slow factor's period in days"
    )
    noise_share: tuple[float, float] = Field(
        (0.005, 0.3),
        description="log-uniform range of the std. dev. of the per-minute multiplicative noise (the seed: 0.01..0.05)",
    )
    noise_tail_df: tuple[float, float] = Field(
        (2.5, 50.0),
        description="log-uniform range of the Student-t degrees of freedom of that noise (small: heavy tails, "
        "outlier minutes); scaled so the std. dev. is noise_share",
    )
    count_noise: bool = Field(True, description="draw each minute as a Poisson count of its mean (noise at low volume)")
    spikes_per_day: tuple[float, float] = Field(
        (0.1, 40.0),
        description="log-uniform range of the rate of bursts per day (mean gap 36 minutes to 10 days; the seed: a "
        "spike every 100..1000 minutes)",
    )
    burst_extra_spikes: tuple[float, float] = Field(
        (0.0, 3.0), description="uniform range of the mean number of further spikes in a burst (Poisson)"
    )
    burst_gap_minutes: tuple[float, float] = Field(
        (3.0, 90.0), description="log-uniform range of the mean gap between the spikes of one burst (exponential)"
    )
    spike_height_share: tuple[float, float] = Field(
        (0.05, 4.0),
        description="log-uniform range of the median spike height relative to the level at its start (each spike "
        "draws its own, lognormal with sigma 0.7 around it)",
    )
    spike_ramp_minutes: tuple[float, float] = Field(
        (0.0, 60.0),
        description="uniform range of the mean rise time of a spike (each draws its own, exponential)",
    )
    spike_length_minutes: tuple[float, float] = Field(
        (3.0, 600.0),
        description="log-uniform range of the median decay time constant (each spike lognormal, sigma 0.7)",
    )
    day_minutes: int = Field(1440, ge=1, description="period of the daily cycle")

    @model_validator(mode="after")
    def _ranges(self) -> BroadLoadParams:
        for name, spec in type(self).model_fields.items():
            value = getattr(self, name)
            if not isinstance(value, tuple):
                continue
            lo, hi = value
            if not lo <= hi:
                raise ValueError(f"{name}: the range ({lo:g}, {hi:g}) is empty (low > high)")
            if _LOG in (spec.description or "") and lo <= 0:
                raise ValueError(f"{name}: a log-uniform range needs a positive low end, got {lo:g}")
            if lo < 0 and name != "trend_per_day":
                raise ValueError(f"{name}: negative values ({lo:g}) make no sense here")
        if self.daily_floor_share[1] > 1:
            raise ValueError("daily_floor_share: a share above 1 makes no sense")
        return self

    def is_log(self, name: str) -> bool:
        """Whether `name` is drawn log-uniformly."""
        return _LOG in (type(self).model_fields[name].description or "")


class TraceWindowParams(BaseModel):
    """How the broad training mixture draws an episode from a real trace: a random window, time-stretched,
    rescaled to a drawn peak, with extra noise and its calendar shifted (uniform unless log-uniform)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    peak_tpm: tuple[float, float] = Field(
        (300.0, 40_000.0), description="log-uniform range of the window's peak after rescaling"
    )
    stretch: tuple[float, float] = Field(
        (0.8, 1.25),
        description="log-uniform range of the time-stretch: the window plays this many trace minutes per minute",
    )
    noise_share: tuple[float, float] = Field(
        (0.0, 0.1), description="uniform range of the std. dev. of extra multiplicative per-minute noise"
    )
    shift_minutes: int = Field(
        720, ge=0, description="the window's timestamps move by up to this many minutes, both ways (uniform)"
    )
    count_noise: bool = Field(True, description="draw each minute as a Poisson count of its rescaled value")

    @model_validator(mode="after")
    def _ranges(self) -> TraceWindowParams:
        for name in ("peak_tpm", "stretch", "noise_share"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name}: the range ({lo:g}, {hi:g}) is empty (low > high)")
            if lo < 0 or (name != "noise_share" and lo <= 0):
                raise ValueError(f"{name}: the low end {lo:g} must be positive")
        return self
