"""The daemon's configuration: a YAML file plus `FLEETPILOT_` environment variables, validated at the edge.

Precedence: environment variables over the YAML file over the defaults. Nested fields use `__`
(`FLEETPILOT_SERVER__PORT=9200`); the `groups` list is replaced as a whole by a JSON value
(`FLEETPILOT_GROUPS='[...]'`). Unknown fields in the file are refused; so is a `FLEETPILOT_` variable that
looks like a misspelt field (`FLEETPILOT_DRYRUN=true` must not be silently ignored). Relative paths (`journal_path`, a CSV source's
`path`) are resolved against the directory of the config file.

Every error is a `ConfigError` whose one-line message names the file, the field path (`groups[0].max_machines`)
and the reason. docs/configuration.md lists every field.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "FLEETPILOT_"
#: Policies that are rules (the fallback must be one); mirrors policies.registry.RULES without importing it.
RULE_POLICIES = ("static", "target-tracking", "step", "predictive", "cushion", "forecast")
#: Source kinds driven by the daemon's simulated clock (each tick is one simulated minute).
SIMULATED_SOURCES = ("simulator", "csv")


class ConfigError(ValueError):
    """A configuration that cannot be used: one line naming the file, the field and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Strict):
    host: str = Field("127.0.0.1", min_length=1, description="address of the metrics/health HTTP server")
    port: int = Field(9108, ge=0, le=65535, description="its TCP port; 0 picks a free one (logged at start)")


# --- metric sources (discriminated on `kind`) -------------------------------------------------------------
class SimulatorSourceConfig(_Strict):
    kind: Literal["simulator"]
    seed: int = Field(0, ge=0, description="seed of the synthetic load (training.load.synthetic_load)")
    peak_tpm: float | None = Field(None, gt=0, description="rescale the load so its maximum is this (tpm)")
    minutes: int = Field(20_160, ge=2, le=525_600, description="length of the generated load; it then repeats")


class CsvSourceConfig(_Strict):
    kind: Literal["csv"]
    path: Path = Field(description="a `timestamp,requests` per-minute CSV (relative to the config file)")
    peak_tpm: float | None = Field(None, gt=0, description="rescale the trace so its maximum is this (tpm)")
    fill_gaps: bool = Field(False, description="interpolate missing minutes instead of refusing the trace")
    loop: bool = Field(True, description="start again at the first minute after the last one")


class PrometheusSourceConfig(_Strict):
    kind: Literal["prometheus"]
    url: str = Field(description="base URL of the Prometheus HTTP API, e.g. http://prometheus:9090")
    query: str = Field(
        min_length=1, pattern=r"\S", description="PromQL expression whose value is transactions per minute (not blank)"
    )
    timeout_seconds: float = Field(5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        try:  # what the source will parse at start (the value is never quoted: it may hold a password)
            parts = urllib.parse.urlsplit(v)
            parts.port  # noqa: B018 - raises on a port that is not a number in 0..65535
        except ValueError:
            raise ValueError("must be an http:// or https:// URL with a valid port") from None
        if not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host name")
        return v


class CloudWatchSourceConfig(_Strict):
    kind: Literal["cloudwatch"]
    namespace: str = Field(min_length=1)
    metric_name: str = Field(min_length=1)
    dimensions: dict[str, str] = Field(default_factory=dict)
    statistic: str = Field("Sum", description="Sum | Average | Maximum | Minimum | SampleCount | pNN")
    region: str = Field("us-east-1", min_length=1)
    endpoint_url: str | None = Field(None, description="override the AWS endpoint (tests, VPC endpoints)")
    timeout_seconds: float = Field(5.0, gt=0, le=60)

    @field_validator("statistic")
    @classmethod
    def _statistic(cls, v: str) -> str:
        if v not in ("Sum", "Average", "Maximum", "Minimum", "SampleCount") and not re.match(r"^p\d{1,2}(\.\d+)?$", v):
            raise ValueError("must be Sum, Average, Maximum, Minimum, SampleCount or a percentile like p99")
        return v


SourceConfig = Annotated[
    SimulatorSourceConfig | CsvSourceConfig | PrometheusSourceConfig | CloudWatchSourceConfig,
    Field(discriminator="kind"),
]


# --- backends (discriminated on `kind`) --------------------------------------------------------------------
class SimulatedBackendConfig(_Strict):
    kind: Literal["simulated"]
    seed: int = Field(0, ge=0, description="noise key = default_rng(seed).integers(0, 2**63, dtype=uint64)")
    initial_machines: int = Field(50, ge=0, description="active machines at start (seed: 50)")
    max_machines: int = Field(833, ge=1, description="the simulated group's own maximum (seed: 833)")
    capacity_sigma_tpm: float = Field(30.0, ge=0, description="std. dev. of per-machine capacity (seed: 30)")
    max_scale_out_per_minute: int = Field(10, ge=1, description="machines the world can start per minute (seed: 10)")
    max_scale_in_per_minute: int = Field(10, ge=1, description="machines the world can stop per minute (seed: 10)")

    @model_validator(mode="after")
    def _initial(self) -> SimulatedBackendConfig:
        if self.initial_machines > self.max_machines:
            raise ValueError(f"initial_machines ({self.initial_machines}) exceeds max_machines ({self.max_machines})")
        return self


class Ec2AsgBackendConfig(_Strict):
    kind: Literal["ec2-asg"]
    group_name: str = Field(min_length=1, description="the Auto Scaling group's name")
    region: str = Field("us-east-1", min_length=1)
    endpoint_url: str | None = Field(None, description="override the AWS endpoint (tests, VPC endpoints)")
    max_retries: int = Field(5, ge=0, le=20)
    retry_base_seconds: float = Field(0.5, ge=0, le=30)


BackendConfig = Annotated[SimulatedBackendConfig | Ec2AsgBackendConfig, Field(discriminator="kind")]


class GroupConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="label in metrics and the journal")
    policy: str = Field(
        "default", min_length=1, description="default | a rule name | a shipped model | a model directory"
    )
    policy_params: dict[str, Any] = Field(default_factory=dict, description="parameters of a rule policy")
    fallback_policy: str = Field("target-tracking", description="rule used on model errors and lasting bad data")
    fallback_policy_params: dict[str, Any] = Field(default_factory=dict)
    min_machines: int = Field(1, ge=0)
    max_machines: int = Field(100, ge=1)
    capacity_tpm_per_machine: float = Field(300.0, gt=0)
    warmup_minutes: int = Field(5, ge=0, le=120)
    max_scale_out_per_tick: int = Field(10, ge=0)
    max_scale_in_per_tick: int = Field(10, ge=0)
    scale_in_stabilization_minutes: int = Field(5, ge=0, le=1440)
    block_scale_in_while_warming: bool = True
    stale_after_seconds: float = Field(180.0, gt=0)
    bad_data_ticks_before_fallback: int = Field(3, ge=1)
    paused: bool = False
    source: SourceConfig
    backend: BackendConfig

    @field_validator("max_machines")
    @classmethod
    def _min_le_max(cls, v: int, info) -> int:
        lo = info.data.get("min_machines")
        if lo is not None and v < lo:
            raise ValueError(f"max_machines ({v}) is below min_machines ({lo})")
        return v

    @field_validator("fallback_policy")
    @classmethod
    def _fallback_is_rule(cls, v: str) -> str:
        if v not in RULE_POLICIES:
            raise ValueError(f"must be a rule policy ({', '.join(RULE_POLICIES)}), got {v!r}")
        return v

    @field_validator("policy")
    @classmethod
    def _policy_known(cls, v: str) -> str:
        if v in RULE_POLICIES or v == "default":
            return v
        if "/" not in v and not v.endswith(".onnx") and not v.startswith("."):
            from fleetpilot.policies.registry import shipped_models

            if v not in shipped_models():
                raise ValueError(
                    f"unknown policy {v!r}: expected default, {', '.join(RULE_POLICIES)}, "
                    "a shipped model name or a model directory"
                )
        return v

    @property
    def simulated_clock(self) -> bool:
        return self.source.kind in SIMULATED_SOURCES


class DaemonConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    interval_seconds: float = Field(60.0, gt=0, le=3600, description="time between ticks")
    dry_run: bool = Field(False, description="run everything but the backend write")
    journal_path: Path = Field(Path("fleetpilot-journal.sqlite"), description="SQLite decision journal")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    server: ServerConfig = Field(default_factory=ServerConfig)
    groups: list[GroupConfig] = Field(min_length=1)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _cross(self) -> DaemonConfig:
        seen: dict[str, int] = {}
        for i, g in enumerate(self.groups):
            if g.name in seen:
                raise ValueError(f"groups[{i}].name: duplicate group name {g.name!r} (also groups[{seen[g.name]}])")
            seen[g.name] = i
        sim = [g.simulated_clock for g in self.groups]
        if any(sim) and not all(sim):
            i = sim.index(not sim[0])
            raise ValueError(
                f"groups[{i}].source.kind: simulated sources ({', '.join(SIMULATED_SOURCES)}) cannot "
                f"be mixed with real sources in one config (groups[0] uses {self.groups[0].source.kind},"
                f" groups[{i}] uses {self.groups[i].source.kind})"
            )
        if not all(sim) and self.interval_seconds != int(self.interval_seconds):
            raise ValueError(
                f"interval_seconds: {self.interval_seconds:g} is a fraction of a second, allowed only "
                "when every group uses a simulator or csv source"
            )
        for i, g in enumerate(self.groups):
            if g.backend.kind == "simulated" and g.backend.initial_machines > g.backend.max_machines:
                raise ValueError(f"groups[{i}].backend.initial_machines: exceeds max_machines")
        return self

    @property
    def simulated_clock(self) -> bool:
        """True when every group replays a simulated or recorded load: each tick is one simulated minute."""
        return all(g.simulated_clock for g in self.groups)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (init_settings, env_settings, _YamlData(settings_cls, cls.yaml_data))

    yaml_data: ClassVar[dict[str, Any]] = {}
    #: FLEETPILOT_ variables that name no field and look like no field: ignored, listed in the config log.
    _ignored_env: list[str] = PrivateAttr(default_factory=list)

    @property
    def ignored_env(self) -> list[str]:
        return list(self._ignored_env)


class _YamlData(PydanticBaseSettingsSource):
    """The parsed YAML file, below the environment in precedence."""

    def __init__(self, settings_cls, data: dict[str, Any]):
        super().__init__(settings_cls)
        self.data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is used
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


# --- loading -----------------------------------------------------------------------------------------------
def _loc(loc: tuple) -> str:
    """('groups', 0, 'source', 'prometheus', 'url') -> groups[0].source.url (the union tag dropped)."""
    out = ""
    prev = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif prev in ("source", "backend") and part in (
            "simulator",
            "csv",
            "prometheus",
            "cloudwatch",
            "simulated",
            "ec2-asg",
        ):
            pass
        elif not str(part).startswith(("function-", "tagged-union")):
            out += ("." if out else "") + str(part)
        prev = part
    return out


def _env_vars() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}


def _check_env_names(where: str) -> list[str]:
    """Refuse a FLEETPILOT_ variable that looks like a misspelt field (FLEETPILOT_DRYRUN); return the names of
    the other unknown ones (other tools' variables, e.g. FLEETPILOT_PROMETHEUS_BIN of the tests), which the
    daemon ignores and lists in its config log line."""
    import difflib

    fields = sorted(DaemonConfig.model_fields)
    ignored = []
    for name in sorted(_env_vars()):
        top = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if top in fields:
            continue
        close = difflib.get_close_matches(top, fields, n=1, cutoff=0.7)
        if close:
            raise ConfigError(
                f"{where}: environment variable {name}: unknown field {top!r} "
                f"(did you mean {ENV_PREFIX}{close[0].upper()}?)"
            )
        ignored.append(name)
    return ignored


def format_validation_error(where: str, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = _loc(tuple(err["loc"]))
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    envs = _env_vars()
    top = loc.split(".", 1)[0].split("[", 1)[0]
    via = [k for k in envs if k.upper().startswith(f"{ENV_PREFIX}{top.upper()}")] if top else []
    src = f"{where} (with {', '.join(sorted(via))})" if via else where
    more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if not loc:  # a model-level validator: its message starts with the field path
        return f"{src}: {msg}{more}"
    return f"{src}: {loc}: {msg}{more}"


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top, found {type(data).__name__}")
    return data


def load_config(path: str | Path) -> DaemonConfig:
    """Read, validate and resolve a config file (plus `FLEETPILOT_` variables). Raises ConfigError."""
    path = Path(path)
    data = read_yaml(path)
    ignored_env = _check_env_names(str(path))
    bound = type("BoundDaemonConfig", (DaemonConfig,), {"yaml_data": data})
    try:
        cfg = bound()
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from None
    except (ValueError, json.JSONDecodeError) as exc:  # an env var that is not valid JSON for a complex field
        raise ConfigError(f"{path}: environment: {str(exc).splitlines()[0]}") from None
    cfg._ignored_env = ignored_env
    base = path.resolve().parent
    if not cfg.journal_path.is_absolute():
        cfg.journal_path = base / cfg.journal_path
    for i, g in enumerate(cfg.groups):
        if isinstance(g.source, CsvSourceConfig):
            if not g.source.path.is_absolute():
                g.source.path = base / g.source.path
            if not g.source.path.is_file():
                raise ConfigError(f"{path}: groups[{i}].source.path: no such file {g.source.path}")
        _check_policy_params(path, i, g)
    return cfg


def _check_policy_params(path: Path, i: int, g: GroupConfig) -> None:
    from fleetpilot.policies.registry import PolicyError, make_policy

    checks = [("fallback_policy_params", g.fallback_policy, g.fallback_policy_params)]
    if g.policy in RULE_POLICIES:
        checks.append(("policy_params", g.policy, g.policy_params))
    elif g.policy_params:
        raise ConfigError(f"{path}: groups[{i}].policy_params: a learned policy ({g.policy}) takes no parameters")
    for field, spec, params in checks:
        try:
            make_policy(spec, params)
        except PolicyError as exc:
            raise ConfigError(f"{path}: groups[{i}].{field}: {exc}") from None


_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|credential|api[_-]?key|access[_-]?key|auth)", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@", re.I)
_QUERY_SECRET = re.compile(
    r"(?P<k>[?&](?:[^=&\s]*(?:token|secret|password|key|signature)[^=&\s]*))=(?P<v>[^&\s]*)", re.I
)


def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy of a plain-data config with anything that looks like a credential replaced by '***'."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str):
        if key and _SECRET_KEY.search(key):
            return "***"
        value = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)
        return _QUERY_SECRET.sub(lambda m: f"{m['k']}=***", value)
    return value


def masked_dump(cfg: DaemonConfig) -> dict[str, Any]:
    return mask_secrets(json.loads(json.dumps(cfg.model_dump(mode="json"))))


def summary(cfg: DaemonConfig) -> str:
    """One line for `fleetpilot config check`."""
    parts = [
        f"{g.name} ({g.policy}, {g.source.kind} -> {g.backend.kind}, {g.min_machines}..{g.max_machines}"
        f"{', paused' if g.paused else ''})"
        for g in cfg.groups
    ]
    mode = "simulated clock" if cfg.simulated_clock else "wall clock"
    return (
        f"{len(cfg.groups)} group{'s' if len(cfg.groups) != 1 else ''}: {'; '.join(parts)}; every "
        f"{cfg.interval_seconds:g} s ({mode}){'; DRY-RUN' if cfg.dry_run else ''}; "
        f"metrics on {cfg.server.host}:{cfg.server.port}; journal {cfg.journal_path}"
    )
