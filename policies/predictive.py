"""`predictive`: a seasonal forecast of the load one warm-up ahead, on top of target tracking.

forecast(t + warm-up) = seasonal x trend, where seasonal is the load around the same minute yesterday (and last
week, averaged in when a week of history exists), and trend = the last `trend_minutes` / the same minutes a day
earlier (clipped to [0.5, 2]). The fleet is max(reactive target tracking, the forecast at the target); the
forecast only ever raises the fleet, so it never scales in on the forecast alone. Before a day of history it is
plain target tracking.
"""

from __future__ import annotations

import numpy as np
from pydantic import ConfigDict, Field

from fleetpilot.policies.base import Policy, PolicyOutput
from fleetpilot.policies.observation import DAY_MINUTES, WEEK_MINUTES, Observation
from fleetpilot.policies.rules import machines_for
from fleetpilot.policies.target_tracking import TargetTrackingParams, TargetTrackingPolicy


class PredictiveParams(TargetTrackingParams):
    """Defaults tuned on synthetic seeds 0..9 by
    `fleetpilot tune --policy predictive --synthetic --seeds 0..9 --minutes 10000` (see README)."""

    model_config = ConfigDict(extra="forbid")
    scale_in_tolerance: float = Field(0.0, ge=0, lt=1, description="scale in only below (1 - this) x current size")
    trend_minutes: int = Field(30, ge=1, le=720, description="window of the trend ratio")
    window_minutes: int = Field(2, ge=0, le=30, description="half width of the seasonal average")


class PredictivePolicy(Policy):
    name = "predictive"

    def __init__(self, params: PredictiveParams | None = None):
        self.params = params or PredictiveParams()
        tt = TargetTrackingParams(**{k: getattr(self.params, k) for k in TargetTrackingParams.model_fields})
        self.tt = TargetTrackingPolicy(tt)

    def reset(self, n: int) -> None:
        self.tt.reset(n)

    def forecast_tpm(self, obs: Observation) -> np.ndarray:
        """Forecast of the load one warm-up ahead; NaN where there is less than a day of history."""
        p, h, w = self.params, obs.history, obs.warmup_minutes
        k = p.window_minutes
        day_lag = DAY_MINUTES - w
        need = DAY_MINUTES + p.trend_minutes
        ok = h.available(need)
        out = np.full(obs.n, np.nan)
        if not ok.any():
            return out
        seasonal = h.window_mean(max(day_lag - k, 0), day_lag + k)
        week = h.available(WEEK_MINUTES + k)
        if week.any():
            wk = h.window_mean(WEEK_MINUTES - w - k, WEEK_MINUTES - w + k)
            seasonal = np.where(week, 0.5 * (seasonal + wk), seasonal)
        recent = h.window_mean(0, p.trend_minutes - 1)
        before = h.window_mean(DAY_MINUTES, DAY_MINUTES + p.trend_minutes - 1)
        trend = np.clip(recent / np.maximum(before, 1e-9), 0.5, 2.0)
        return np.where(ok, seasonal * trend, np.nan)

    def decide(self, obs: Observation) -> PolicyOutput:
        f = self.forecast_tpm(obs)
        floor = np.where(
            np.isnan(f), 0, machines_for(np.nan_to_num(f), obs.capacity_tpm_per_machine, self.params.target_utilization)
        )
        return self.tt.decide_with_floor(obs, floor.astype(np.int64))
