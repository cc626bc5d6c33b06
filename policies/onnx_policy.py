"""A learned policy served with onnxruntime (never torch).

A model directory holds `policy.onnx` and `manifest.json`. Loading checks, in this order and before any byte
of the model reaches onnxruntime: the manifest parses and has the fields this build needs; the observation
spec version equals `OBS_VERSION`; the sha256 of policy.onnx equals the manifest's. Any mismatch raises
`ModelError` with a message that says which check failed.

Input `features` (N, OBS_DIM) float32 -> outputs `action` (N,) int64 (argmax) and `logits` (N, A) float32.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from fleetpilot.policies.actions import ActionMapping
from fleetpilot.policies.base import Policy, PolicyOutput
from fleetpilot.policies.errors import UserError
from fleetpilot.policies.observation import OBS_DIM, OBS_VERSION, Observation

MANIFEST_FORMAT = 1
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class ModelError(UserError):
    """A model that must not be used; the message names the directory and the failed check."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(model_dir: str | Path) -> dict:
    d = Path(model_dir)
    path = d / "manifest.json"
    if not path.is_file():
        raise ModelError(f"{d}: no manifest.json (not a model directory)")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    for key in ("format_version", "model_file", "sha256", "observation", "action_mapping"):
        if key not in m:
            raise ModelError(f"{path}: missing field '{key}'")
    if m["format_version"] != MANIFEST_FORMAT:
        raise ModelError(f"{path}: manifest format {m['format_version']!r}, this build reads {MANIFEST_FORMAT}")
    return m


def verify(model_dir: str | Path) -> tuple[dict, Path]:
    """The manifest and the model path, after every check; raises ModelError."""
    d = Path(model_dir)
    m = read_manifest(d)
    obs = m["observation"]
    if obs.get("version") != OBS_VERSION or obs.get("dim") != OBS_DIM:
        raise ModelError(
            f"{d}: trained on observation spec v{obs.get('version')} ({obs.get('dim')} features); "
            f"this build builds v{OBS_VERSION} ({OBS_DIM} features): retrain or use a matching build"
        )
    model = d / m["model_file"]
    if not model.is_file():
        raise ModelError(f"{d}: model file {m['model_file']} is missing")
    digest = sha256_of(model)
    if digest != m["sha256"]:
        raise ModelError(
            f"{model}: sha256 {digest[:12]}... does not match the manifest's {str(m['sha256'])[:12]}... "
            "(corrupt or altered model)"
        )
    try:
        ActionMapping.from_json(m["action_mapping"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{d}: action mapping: {exc}") from None
    return m, model


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

    @classmethod
    def load(cls, model_dir: str | Path, providers: list[str] | None = None, threads: int | None = None) -> OnnxPolicy:
        manifest, model = verify(model_dir)
        import onnxruntime as ort

        chosen = choose_providers(providers)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            sess = ort.InferenceSession(model.read_bytes(), sess_options=opts, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{model}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
        return cls(manifest.get("name", Path(model_dir).name), sess, manifest, chosen)

    def reset(self, n: int) -> None:
        pass

    def actions(self, features: np.ndarray) -> np.ndarray:
        action, logits = self.session.run(
            ["action", "logits"], {"features": np.ascontiguousarray(features, np.float32)}
        )
        if not np.all(np.isfinite(logits)):
            raise ModelError(f"model {self.name}: non-finite output")
        self.last_logits = logits
        return action.astype(np.int64)

    def decide(self, obs: Observation) -> PolicyOutput:
        k = self.actions(obs.features)
        if k.shape != (obs.n,) or k.min(initial=0) < 0 or k.max(initial=0) >= self.mapping.n:
            raise ModelError(f"model {self.name}: action outside [0, {self.mapping.n})")
        return PolicyOutput(self.mapping.desired(k, obs), k)
