"""Policies by name: the rule baselines, shipped models under `policies/models/<name>/`, or a model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fleetpilot.policies.base import Policy
from fleetpilot.policies.cushion import CushionParams, CushionPolicy
from fleetpilot.policies.errors import UserError
from fleetpilot.policies.forecast import ForecastParams, ForecastPolicy
from fleetpilot.policies.newsvendor import NewsvendorParams, NewsvendorPolicy
from fleetpilot.policies.predictive import PredictiveParams, PredictivePolicy
from fleetpilot.policies.static import StaticParams, StaticPolicy
from fleetpilot.policies.step import StepParams, StepPolicy
from fleetpilot.policies.target_tracking import TargetTrackingParams, TargetTrackingPolicy

MODELS_DIR = Path(__file__).resolve().parent / "models"
RULES = {
    "static": (StaticPolicy, StaticParams),
    "target-tracking": (TargetTrackingPolicy, TargetTrackingParams),
    "step": (StepPolicy, StepParams),
    "predictive": (PredictivePolicy, PredictiveParams),
    "cushion": (CushionPolicy, CushionParams),
    "forecast": (ForecastPolicy, ForecastParams),
    "newsvendor": (NewsvendorPolicy, NewsvendorParams),
}
#: The rule names, in the registry's order: every list of rules (the config's fallback choices, the command
#: line's help and choices, `fleetpilot tune`'s grids) is this one.
RULE_NAMES: tuple[str, ...] = tuple(RULES)
#: The rules `fleetpilot backtest` compares when no --policy is given: the classic baselines (the cushion rule is
#: the learned policy's starting rule, which `fleetpilot train` compares with its model).
BACKTEST_BASELINES = ("static", "target-tracking", "step", "predictive")
#: The rules `fleetpilot train` compares its model with on the validation loads.
TRAIN_BASELINES = ("target-tracking", "predictive", "step", "cushion", "newsvendor")


class PolicyError(UserError):
    """A policy that cannot be made; the message says which and why."""


def shipped_models() -> list[str]:
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "manifest.json").is_file())


def model_dir(spec: str) -> Path | None:
    """The directory of a shipped model name or a model path; None when `spec` is a rule name."""
    if spec in RULES:
        return None
    if (MODELS_DIR / spec / "manifest.json").is_file():
        return MODELS_DIR / spec
    p = Path(spec)
    if p.is_dir():
        return p
    if "/" in spec or spec.endswith(".onnx"):
        raise PolicyError(f"no such model directory: {spec}")
    return None


def make_policy(spec: str, params: dict[str, Any] | None = None, providers: list[str] | None = None) -> Policy:
    """A policy from a rule name (with optional parameter overrides), a shipped model name, or a model dir."""
    if spec in RULES:
        cls, pcls = RULES[spec]
        try:
            return cls(pcls(**(params or {})))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or spec
            raise PolicyError(f"policy {spec}: parameter {loc}: {err['msg']}") from None
    d = model_dir(spec)
    if d is None:
        known = ", ".join(list(RULES) + shipped_models())
        raise PolicyError(f"unknown policy {spec!r}: expected one of {known}, or a model directory")
    if params:
        raise PolicyError(f"policy {spec}: a learned policy takes no parameters")
    from fleetpilot.policies.onnx_policy import OnnxPolicy  # onnxruntime only when a model is used

    return OnnxPolicy.load(d, providers=providers)
