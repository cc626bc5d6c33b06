"""A learned policy served with onnxruntime (never torch).

A model directory holds `policy.onnx` and `manifest.json`. Loading checks, in this order and before any byte
of the model reaches onnxruntime: the manifest is a regular file of at most 4 MiB, valid JSON without
duplicate keys, and validates as `Manifest` (types; `model_file` a name inside the directory, no absolute path
or `..`; utilization in [0.05, 1], cushion in [0, 10], ...); the observation spec version equals
`OBS_VERSION`; the model file resolves inside the directory (no symlink out) and is a regular file; the
sha256 of its bytes equals the manifest's, and those very bytes are what onnxruntime loads. Any mismatch raises
`ModelError` with a message that says which check failed.

A model reads the features its manifest names (`observation.features`), by name: a model trained on an older
observation version (at least `MIN_OBS_VERSION`) keeps working on this builder when every feature it names still
has the meaning it was trained on (`FEATURE_SINCE[name] <= its version`). A name this build does not compute, a
feature whose meaning changed since, a version newer than this build's, or a list that disagrees with `dim`
is refused (a version-2 model, the first 26 features, runs unchanged on version 3). So is a model
whose newsvendor actions were trained on another version of the rise tail (`action_mapping.newsvendor_tail`).

Input `features` (N, len(manifest features)) float32, the builder's columns of those names in the manifest's
order -> outputs `action` (N,) int64 (argmax) and `logits` (N, A) float32. `OnnxPolicy.actions` takes the
builder's (N, OBS_DIM) features and selects the columns itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleetpilot.policies.actions import MAX_CUSHION_DAY_MAX_SHARE, MAX_RISK, MAX_SURGE_RATIO, ActionMapping
from fleetpilot.policies.base import MIN_UTILIZATION, Policy, PolicyOutput
from fleetpilot.policies.errors import UserError
from fleetpilot.policies.files import (
    MAX_MANIFEST_BYTES,
    MAX_MODEL_BYTES,
    FileReadError,
    open_regular,
    read_regular,
)
from fleetpilot.policies.observation import (
    FEATURE_INDEX,
    FEATURE_SINCE,
    MIN_OBS_VERSION,
    OBS_DIM,
    OBS_VERSION,
    Observation,
)
from fleetpilot.policies.rise_tail import TAIL_VERSION

MANIFEST_FORMAT = 1
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class ModelError(UserError):
    """A model that must not be used; the message names the directory and the failed check."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path, MAX_MODEL_BYTES) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- the manifest, validated before anything else ------------------------------------------------------------
class _Spec(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)


class ObservationSpec(_Spec):
    version: int = Field(ge=0, le=1_000_000)
    dim: int = Field(ge=1, le=100_000)
    features: list[str] | None = Field(None, max_length=100_000)


class ActionMappingSpec(_Spec):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    kind: str = Field(max_length=200)
    utilization: list[Annotated[float, Field(ge=MIN_UTILIZATION, le=1.0)]] = Field(min_length=1, max_length=10_000)
    cushion_day_max_share: list[Annotated[float, Field(ge=0.0, le=MAX_CUSHION_DAY_MAX_SHARE)]] = Field(
        min_length=1, max_length=10_000
    )
    base_minutes: int = Field(1, ge=1, le=60)
    surge_ratio: float = Field(1.1, ge=1.0, le=MAX_SURGE_RATIO)
    newsvendor_risk: list[Annotated[float, Field(gt=0.0, le=MAX_RISK)]] = Field([], max_length=1_000)
    newsvendor_rise_scale: Literal["hour", "day", "mixture"] = "hour"
    newsvendor_tail: int = Field(1, ge=1, le=1_000_000)  # manifests without it: the first tail (rise_tail.py)

    @field_validator("utilization", "cushion_day_max_share", "surge_ratio", "newsvendor_risk", mode="before")
    @classmethod
    def _ints_are_floats(cls, v: Any) -> Any:  # JSON writes 1.0 as 1: accept ints where floats are meant
        if isinstance(v, list):
            return [float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


class Manifest(_Spec):
    """What this build needs of a model's manifest.json (other fields, e.g. evaluation results, are kept)."""

    format_version: int
    name: str | None = Field(None, min_length=1, max_length=200)
    model_file: str = Field(min_length=1, max_length=255)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    observation: ObservationSpec
    action_mapping: ActionMappingSpec

    @field_validator("model_file")
    @classmethod
    def _inside(cls, v: str) -> str:
        pure = PurePosixPath(v)
        if pure.is_absolute() or "\\" in v or "\x00" in v or any(part in ("..", "") for part in v.split("/")):
            raise ValueError(f"must be a file name inside the model directory (no absolute path, no '..'), got {v!r}")
        return v


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def read_manifest(model_dir: str | Path) -> dict:
    """The manifest as a dict, after the whole of it was validated (`Manifest`); raises ModelError."""
    d = Path(model_dir)
    path = d / "manifest.json"
    if not path.exists():
        raise ModelError(f"{d}: no manifest.json (not a model directory)")
    try:
        raw = read_regular(path, MAX_MANIFEST_BYTES)
    except (FileReadError, OSError) as exc:
        raise ModelError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        m = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError, a 5,000-digit integer
        raise ModelError(f"{path}: not valid JSON ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(m, dict):
        raise ModelError(f"{path}: expected a JSON object, found {type(m).__name__}")
    if "format_version" in m and m["format_version"] != MANIFEST_FORMAT:
        raise ModelError(
            f"{path}: format_version: {str(m['format_version'])[:20]!r}, this build reads {MANIFEST_FORMAT}"
        )
    try:
        Manifest.model_validate(m)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err["loc"]) or "manifest"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "missing field"
        raise ModelError(f"{path}: {loc}: {msg}") from None
    return m


def feature_columns(d: str | Path, manifest: dict) -> np.ndarray:
    """(k,) int64: the builder's column of each feature the model reads, in the model's input order; raises
    ModelError naming the first feature or field this build cannot serve (module docstring)."""
    obs = manifest["observation"]
    version, dim, names = obs.get("version"), obs.get("dim"), obs.get("features")
    if not MIN_OBS_VERSION <= version <= OBS_VERSION:
        raise ModelError(
            f"{d}: trained on observation spec v{version} ({dim} features); this build builds v{OBS_VERSION} "
            f"({OBS_DIM} features) and serves models of v{MIN_OBS_VERSION}..v{OBS_VERSION}: retrain or use a "
            "matching build"
        )
    if names is None:
        if version == OBS_VERSION and dim == OBS_DIM:
            return np.arange(OBS_DIM)
        raise ModelError(f"{d}: observation.features: missing; a v{version} model must name the features it reads")
    if len(names) != dim:
        raise ModelError(f"{d}: observation.features: {len(names)} names but observation.dim is {dim}")
    seen: set[str] = set()
    for name in names:
        if name not in FEATURE_INDEX:
            raise ModelError(
                f"{d}: observation.features: {str(name)[:80]!r} is not a feature of this build "
                f"(observation spec v{OBS_VERSION}): retrain or use a matching build"
            )
        if FEATURE_SINCE[name] > version:
            raise ModelError(
                f"{d}: observation.features: {name!r} means something else since observation spec "
                f"v{FEATURE_SINCE[name]} (the model was trained on v{version}): retrain"
            )
        if name in seen:
            raise ModelError(f"{d}: observation.features: {name!r} is named twice")
        seen.add(name)
    return np.array([FEATURE_INDEX[name] for name in names], dtype=np.int64)


def verify(model_dir: str | Path) -> tuple[dict, Path]:
    """The manifest and the model path, after every check; raises ModelError."""
    m, model, _ = verified_model(model_dir)
    return m, model


def verified_model(model_dir: str | Path) -> tuple[dict, Path, bytes]:
    """The manifest, the model path and the very bytes whose sha256 was checked; raises ModelError."""
    d = Path(model_dir)
    m = read_manifest(d)
    feature_columns(d, m)
    model = d / m["model_file"]
    if not model.exists():
        raise ModelError(f"{d}: model file {m['model_file']} is missing")
    if not model.resolve().is_relative_to(d.resolve()):
        raise ModelError(f"{d}: model file {m['model_file']} resolves outside the model directory")
    try:
        data = read_regular(model, MAX_MODEL_BYTES)
    except (FileReadError, OSError) as exc:
        raise ModelError(f"{model}: {getattr(exc, 'strerror', None) or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != m["sha256"]:
        raise ModelError(
            f"{model}: sha256 {digest[:12]}... does not match the manifest's {str(m['sha256'])[:12]}... "
            "(corrupt or altered model)"
        )
    try:
        ActionMapping.from_json(m["action_mapping"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{d}: action mapping: {exc}") from None
    tail = m["action_mapping"].get("newsvendor_tail")
    if m["action_mapping"].get("newsvendor_risk") and tail != TAIL_VERSION:
        said = "absent (a model from before the field: rise tail v1)" if tail is None else f"{tail}"
        raise ModelError(
            f"{d / 'manifest.json'}: action_mapping.newsvendor_tail: {said}: its newsvendor actions were trained on "
            f"rise tail v{tail or 1}; this build's tail is v{TAIL_VERSION} (policies/rise_tail.py), so they would "
            "price other risks: retrain"
        )
    return m, model, data


def choose_providers(requested: list[str] | None = None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ModelError(f"onnxruntime providers {missing} are not available (available: {available})")
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available] or list(available)


class OnnxPolicy(Policy):
    """Batched ONNX inference: all groups that share the model are decided in one call."""

    def __init__(self, name: str, session, manifest: dict, providers: list[str]):
        self.name = name
        self.session = session
        self.manifest = manifest
        self.providers = providers
        self.mapping = ActionMapping.from_json(manifest["action_mapping"])
        self.last_logits: np.ndarray | None = None
        cols = feature_columns(name, manifest)
        #: the builder's columns the model reads (None: all of them, in order)
        self.columns: np.ndarray | None = None if np.array_equal(cols, np.arange(OBS_DIM)) else cols

    @classmethod
    def load(cls, model_dir: str | Path, providers: list[str] | None = None, threads: int | None = None) -> OnnxPolicy:
        manifest, model, data = verified_model(model_dir)
        import onnxruntime as ort

        chosen = choose_providers(providers)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            sess = ort.InferenceSession(data, sess_options=opts, providers=chosen)  # the bytes that were hashed
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{model}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
        width = manifest["observation"]["dim"]
        inputs = {i.name: i.shape for i in sess.get_inputs()}
        shape = inputs.get("features")
        if shape is None or len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != width):
            raise ModelError(
                f"{model}: its input 'features' is {shape}, the manifest's observation.dim is {width} "
                f"(inputs: {sorted(inputs)[:5]})"
            )
        n_actions = ActionMapping.from_json(manifest["action_mapping"]).n
        outputs = {o.name: o.shape for o in sess.get_outputs()}
        logits = outputs.get("logits")
        if logits is not None and len(logits) == 2 and isinstance(logits[1], int) and logits[1] != n_actions:
            raise ModelError(
                f"{model}: its output 'logits' has {logits[1]} actions, the manifest's action_mapping has {n_actions}"
            )
        return cls(manifest.get("name", Path(model_dir).name), sess, manifest, chosen)

    def reset(self, n: int) -> None:
        pass

    def actions(self, features: np.ndarray) -> np.ndarray:
        """The actions for the builder's (N, OBS_DIM) features (the model reads its own columns of them)."""
        if features.ndim != 2 or features.shape[1] != OBS_DIM:
            raise ValueError(f"model {self.name}: expected (N, {OBS_DIM}) features, got {features.shape}")
        x = features if self.columns is None else features[:, self.columns]
        action, logits = self.session.run(["action", "logits"], {"features": np.ascontiguousarray(x, np.float32)})
        if not np.all(np.isfinite(logits)):
            raise ModelError(f"model {self.name}: non-finite output")
        self.last_logits = logits
        return action.astype(np.int64)

    def decide(self, obs: Observation) -> PolicyOutput:
        k = self.actions(obs.features)
        if k.shape != (obs.n,) or k.min(initial=0) < 0 or k.max(initial=0) >= self.mapping.n:
            raise ModelError(f"model {self.name}: action outside [0, {self.mapping.n})")
        return PolicyOutput(self.mapping.desired(k, obs), k)
