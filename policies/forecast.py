"""A forecast of the load one horizon ahead (the warm-up, 5 minutes by default), from the per-minute history.

numpy only and stateless: every forecast is a function of the last minutes of a group's history (the ring
buffer of `policies.observation`), so a daemon that restarts with its history backfilled forecasts exactly as
one that never stopped, and one call serves N groups at once.

Two forecasters, blended by their recent accuracy:
- **seasonal naive**: the load at the same minute yesterday, h minutes ahead, scaled by the recent level ratio
  (the mean of the last `ratio_minutes` over the mean of the same minutes a day earlier, clipped to [0.25, 4]);
  available once a day and `ratio_minutes` of history exist;
- **Holt** (level + trend, smoothing `alpha`, `beta`), written as the linear filter it is: the h-step forecast
  is a fixed weighted sum of the last `holt_lags` loads. The weights are Holt's impulse response, truncated and
  then corrected (least squares) so that they reproduce a constant and a straight line exactly.

Each forecaster's errors at the same horizon over the last `error_minutes` (the forecast made h minutes before
each of those minutes, against what came) give the blend: weights inversely proportional to their mean squared
errors, so a load that repeats daily is forecast from yesterday and a trending one from its trend. The blend's
own relative errors over that window give the quantiles: `Forecast.quantile(q)` is the point forecast times
(1 + the q-quantile of the recent relative errors), an empirical prediction interval that widens on noisy or
bursty loads by itself.

The `forecast` rule (AWS predictive scaling style) provisions, minute by minute, for the q-quantile forecast of
the load one warm-up ahead at the target utilization, never below what the current load needs at that
utilization; scale-ins follow target tracking (`policies.target_tracking`). Its defaults were tuned on synthetic
seeds 0..9 by `fleetpilot tune --policy forecast --synthetic --seeds 0..9 --minutes 10000` (README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import ConfigDict, Field

from fleetpilot.policies.base import Policy, PolicyOutput
from fleetpilot.policies.observation import DAY_MINUTES, HISTORY_MINUTES, LoadHistory, Observation
from fleetpilot.policies.rules import machines_for
from fleetpilot.policies.target_tracking import TargetTrackingParams, TargetTrackingPolicy

#: Errors are relative to the forecast, but never to less than this share of the recent mean load (an idle
#: minute's forecast near zero would make any load an infinite relative error).
REL_FLOOR_SHARE = 0.1
#: Fewest valid error minutes before a forecaster takes part in the blend (the seasonal one) or before the
#: quantiles use the errors (below, the quantile forecast is the point forecast).
MIN_ERRORS = 30
_RATIO_CLIP = (0.25, 4.0)


def holt_weights(alpha: float, beta: float, horizon: int, lags: int) -> np.ndarray:
    """(lags,) weights w with forecast(t + horizon) = sum_k w[k] x[t - k]: Holt's linear method as a filter.

    Holt: level_t = a x_t + (1 - a)(level + trend)_{t-1}; trend_t = b (level_t - level_{t-1}) + (1 - b) trend_{t-1};
    forecast = level_t + h trend_t. Both are linear in the past loads; the impulse response is truncated at
    `lags` and projected onto the weights that forecast any straight line exactly (sum w = 1, sum w (-k) = h)."""
    if not (0 < alpha <= 1 and 0 <= beta <= 1 and horizon >= 1 and lags >= 2):
        raise ValueError("holt_weights: need 0 < alpha <= 1, 0 <= beta <= 1, horizon >= 1, lags >= 2")
    # the response to an impulse k minutes ago is the forecast after feeding x = [1, 0, 0, ...] for k + 1 minutes
    # (starting from level = trend = 0): run once over `lags` minutes and read it backwards
    level = trend = 0.0
    w = np.empty(lags)
    for k in range(lags):
        x = 1.0 if k == 0 else 0.0
        new_level = alpha * x + (1 - alpha) * (level + trend)
        trend = beta * (new_level - level) + (1 - beta) * trend
        level = new_level
        w[k] = level + horizon * trend
    a = np.vstack([np.ones(lags), -np.arange(lags, dtype=np.float64)])
    c = np.array([1.0, float(horizon)])
    return w - a.T @ np.linalg.solve(a @ a.T, a @ w - c)


@dataclass
class Forecast:
    """Forecasts of N groups for one horizon: the point forecast, the blend weight of the seasonal forecaster,
    and the recent relative errors (N, W) (NaN where a group has no such minute yet)."""

    point: np.ndarray
    seasonal_weight: np.ndarray
    rel_errors: np.ndarray
    scale: np.ndarray  #: (N,) what relative errors are relative to: max(point, REL_FLOOR_SHARE x recent mean)

    def quantile(self, q: float) -> np.ndarray:
        """(N,) the q-quantile forecast: point + scale x the q-quantile of the recent relative errors (the
        point forecast where fewer than MIN_ERRORS errors exist). Never below 0."""
        e = self.rel_errors
        have = np.count_nonzero(~np.isnan(e), axis=1)
        if e.shape[1] == 0 or not (have >= MIN_ERRORS).any():
            return np.maximum(self.point, 0.0)
        if (have == e.shape[1]).all():
            qe = np.quantile(e, q, axis=1)
        else:
            with np.errstate(all="ignore"):
                qe = np.nanquantile(np.where(have[:, None] >= MIN_ERRORS, e, 0.0), q, axis=1)
        qe = np.where(have >= MIN_ERRORS, qe, 0.0)
        return np.maximum(self.point + self.scale * qe, 0.0)


def _window_sums(x: np.ndarray, m: int) -> np.ndarray:
    """(N, C - m + 1) sums of the m consecutive columns ending at each column from m - 1 on."""
    c = np.cumsum(x, axis=1)
    out = c[:, m - 1 :].copy()
    out[:, 1:] -= c[:, :-m]
    return out


class Forecaster:
    """The blended forecast `horizon` minutes ahead (see the module docstring). One instance serves any N."""

    def __init__(
        self,
        horizon: int,
        alpha: float = 0.3,
        beta: float = 0.05,
        holt_lags: int = 120,
        ratio_minutes: int = 60,
        error_minutes: int = 360,
        season_minutes: int = DAY_MINUTES,
    ):
        if horizon < 1 or ratio_minutes < 1 or error_minutes < 0:
            raise ValueError("Forecaster: horizon and ratio_minutes must be >= 1, error_minutes >= 0")
        self.h, self.m, self.w_len, self.d = int(horizon), int(ratio_minutes), int(error_minutes), int(season_minutes)
        self.k = int(holt_lags)
        self.weights = holt_weights(alpha, beta, self.h, self.k)
        # lags read: the oldest error minute's origin (w - 1 + h) plus the longest reach back from an origin
        self.lags = self.w_len - 1 + self.h + max(self.k - 1, self.d + self.m - 1) + 1
        n_orig = self.w_len + self.h
        self._nfft = 1 << int(np.ceil(np.log2(n_orig + 2 * self.k)))
        self._w_fft = np.fft.rfft(self.weights, self._nfft)
        if self.lags > HISTORY_MINUTES:
            raise ValueError(f"Forecaster: needs {self.lags} minutes of history, the builder keeps {HISTORY_MINUTES}")

    def forecast(self, history: LoadHistory) -> Forecast:
        """The forecast of every group of an observation's history (`Observation.history`)."""
        return self.from_lags(history.lags(0, self.lags - 1), history.count)

    def from_lags(self, lags: np.ndarray, count: np.ndarray) -> Forecast:
        """The forecast from (N, L) loads at lags 0..L-1 (lag 0 the last minute; L = `self.lags`) and the number
        of real samples behind each row (older lags repeat the first sample, as the builder's ring does)."""
        x = np.ascontiguousarray(lags[:, ::-1], dtype=np.float64)  # oldest first; x[:, -1] is now
        big_l, h, w_len, d, m, k = x.shape[1], self.h, self.w_len, self.d, self.m, self.k
        count = np.asarray(count, dtype=np.int64)
        # origins: now - j - h for the error minutes j = 0..W-1, and now itself; as columns of x, oldest first
        n_orig = w_len + h
        o_idx = big_l - n_orig + np.arange(n_orig)  # o_idx[-1] = now; o_idx[i] the origin of minute o_idx[i] + h
        # Holt at every origin: the filter (weights over lags 0..k-1) convolved with the loads, by FFT
        seg = x[:, big_l - n_orig - k + 1 :]  # (N, n_orig + k - 1): what the origins' filters read
        holt = np.fft.irfft(np.fft.rfft(seg, self._nfft, axis=1) * self._w_fft, self._nfft, axis=1)
        holt = holt[:, k - 1 : k - 1 + n_orig]
        # seasonal naive at every origin: x[o + h - d] x (sum of the last m minutes / the same a day earlier)
        recent = _window_sums(x[:, o_idx[0] + 1 - m : o_idx[-1] + 1], m)
        before = _window_sums(x[:, o_idx[0] + 1 - d - m : o_idx[-1] + 1 - d], m)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(before > 0, recent / before, np.where(recent > 0, _RATIO_CLIP[1], 1.0))
        ratio = np.clip(ratio, *_RATIO_CLIP)
        seasonal = x[:, o_idx + h - d] * ratio
        # the lag of each origin, and which forecasts and errors a group's history supports
        o_lag = (big_l - 1) - o_idx  # (n_orig,) lag of the origin: w - 1 + h .. 0
        target = x[:, o_idx[:w_len] + h]  # (N, W) the load that came, oldest first
        holt_ok = o_lag[None, :w_len] < count[:, None]  # the origin is a real sample
        seas_ok = (o_lag[None, :w_len] + d + m - 1) < count[:, None]
        e_h = np.where(holt_ok, target - holt[:, :w_len], 0.0)
        e_s = np.where(seas_ok, target - seasonal[:, :w_len], 0.0)
        n_h = holt_ok.sum(axis=1)
        n_s = seas_ok.sum(axis=1)
        mse_h = (e_h * e_h).sum(axis=1) / np.maximum(n_h, 1)
        mse_s = (e_s * e_s).sum(axis=1) / np.maximum(n_s, 1)
        seas_now = (d + m - 1) < count
        use_s = seas_now & (n_s >= MIN_ERRORS)
        tot = mse_h + mse_s
        with np.errstate(divide="ignore", invalid="ignore"):
            ws = np.where(tot > 0, mse_h / tot, 0.5)
        ws = np.where(use_s, ws, 0.0)
        blend = (1.0 - ws[:, None]) * holt + ws[:, None] * np.where(use_s[:, None], seasonal, 0.0)
        point = np.maximum(blend[:, -1], 0.0)
        mean = x[:, big_l - n_orig :].mean(axis=1)
        floor = REL_FLOOR_SHARE * np.maximum(mean, 0.0)
        past_scale = np.maximum(np.maximum(blend[:, :w_len], floor[:, None]), 1e-9)
        rel = np.where(holt_ok, (target - blend[:, :w_len]) / past_scale, np.nan)
        return Forecast(point, ws, rel, np.maximum(np.maximum(point, floor), 1e-9))


def forecast_series(
    load_tpm: np.ndarray, forecaster: Forecaster, q: float | None = None, chunk: int = 2048
) -> np.ndarray:
    """(T,) the forecast made at each minute of `load_tpm` for minute t + horizon (the point forecast, or the
    q-quantile forecast), exactly as a builder fed the same minutes from the first one on would give it (float32
    history, the first sample repeated into the past), computed for all minutes at once in chunks."""
    x = np.asarray(load_tpm, dtype=np.float32).astype(np.float64)
    t_len, big_l = x.shape[0], forecaster.lags
    padded = np.concatenate([np.full(big_l - 1, x[0]), x])
    out = np.empty(t_len)
    for s in range(0, t_len, chunk):
        e = min(s + chunk, t_len)
        win = sliding_window_view(padded[s : e + big_l - 1], big_l)[:, ::-1]  # row i: lags 0..L-1 at minute s + i
        f = forecaster.from_lags(win, np.arange(s + 1, e + 1))
        out[s:e] = f.point if q is None else f.quantile(q)
    return out


def forecast_error(load_tpm: np.ndarray, first: int, horizon: int, forecaster: Forecaster | None = None) -> dict:
    """Scale-free accuracy of the forecast `horizon` minutes ahead, over the forecasts made at minutes first ..
    T - 1 - horizon: MAE / mean load, and the same for the naive forecast (the last minute's load), for
    reference; also the sums behind them (`abs_error`, `naive_abs_error`, `load`) for pooling runs."""
    f = forecaster or Forecaster(horizon)
    x = np.asarray(load_tpm, dtype=np.float64)
    origins = np.arange(first, x.shape[0] - horizon)
    actual = x[origins + horizon]
    load = float(np.abs(actual).sum())
    err = float(np.abs(actual - forecast_series(x, f)[origins]).sum()) if origins.size else 0.0
    naive = float(np.abs(actual - x[origins]).sum())
    return {
        "horizon_minutes": horizon,
        "mae_over_mean_load": round(err / load, 4) if load > 0 else None,
        "naive_mae_over_mean_load": round(naive / load, 4) if load > 0 else None,
        "abs_error": err,
        "naive_abs_error": naive,
        "load": load,
    }


class ForecastParams(TargetTrackingParams):
    """Defaults tuned on synthetic seeds 0..9 (`fleetpilot tune --policy forecast --synthetic --seeds 0..9
    --minutes 10000`: 0.65, 0.5, 0.05 earned $278,644 with 42 downtime minutes; the quantile sits at the grid's
    lowest value: on the seed's load the spikes are what costs, and no forecast sees them coming)."""

    model_config = ConfigDict(extra="forbid")
    target_utilization: float = Field(0.65, gt=0, le=1, description="load / mean capacity to hold")
    quantile: float = Field(0.5, gt=0, lt=1, description="provision for this quantile of the forecast load")
    horizon_minutes: int | None = Field(
        None, ge=1, le=60, description="how far ahead to forecast (default: the group's warm-up)"
    )
    alpha: float = Field(0.3, gt=0, le=1, description="Holt level smoothing")
    beta: float = Field(0.05, ge=0, le=1, description="Holt trend smoothing")
    ratio_minutes: int = Field(60, ge=1, le=720, description="window of the seasonal level ratio")
    error_minutes: int = Field(360, ge=MIN_ERRORS, le=2880, description="recent minutes whose errors set the quantile")


class ForecastPolicy(Policy):
    name = "forecast"

    def __init__(self, params: ForecastParams | None = None):
        self.params = params or ForecastParams()
        tt = TargetTrackingParams(**{k: getattr(self.params, k) for k in TargetTrackingParams.model_fields})
        self.tt = TargetTrackingPolicy(tt)
        self._forecasters: dict[int, Forecaster] = {}

    def reset(self, n: int) -> None:
        self.tt.reset(n)

    def forecaster(self, warmup_minutes: int) -> Forecaster:
        h = self.params.horizon_minutes or warmup_minutes
        if h not in self._forecasters:
            p = self.params
            self._forecasters[h] = Forecaster(
                h, alpha=p.alpha, beta=p.beta, ratio_minutes=p.ratio_minutes, error_minutes=p.error_minutes
            )
        return self._forecasters[h]

    def forecast_tpm(self, obs: Observation) -> np.ndarray:
        """(N,) the q-quantile forecast of the load one horizon ahead."""
        return self.forecaster(obs.warmup_minutes).forecast(obs.history).quantile(self.params.quantile)

    def decide(self, obs: Observation) -> PolicyOutput:
        floor = machines_for(self.forecast_tpm(obs), obs.capacity_tpm_per_machine, self.params.target_utilization)
        return self.tt.decide_with_floor(obs, floor)
