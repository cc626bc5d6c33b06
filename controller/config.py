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

from fleetpilot.controller.journal import MAX_STABILIZATION_MINUTES
from fleetpilot.controller.state import StateDirError, default_journal_path
from fleetpilot.policies.base import MAX_FLEET_MACHINES
from fleetpilot.policies.errors import UserError
from fleetpilot.policies.files import (
    MAX_CONFIG_BYTES,
    MAX_SECRET_BYTES,
    DuplicateKeyError,
    FileReadError,
    load_yaml,
    read_regular,
    yaml_problem,
)
from fleetpilot.policies.registry import RULE_NAMES

ENV_PREFIX = "FLEETPILOT_"
#: Policies that are rules (the fallback must be one): the registry's.
RULE_POLICIES = RULE_NAMES
#: Source kinds driven by the daemon's simulated clock (each tick is one simulated minute).
SIMULATED_SOURCES = ("simulator", "csv")
#: A reading that needs more than this many times a group's `max_machines` (at its capacity per machine) is
#: bad data (`implausible`: held, never a scale-in), unless `max_load_tpm` sets the ceiling explicitly.
IMPLAUSIBLE_LOAD_FACTOR = 1000
#: Largest capacity per machine accepted (tpm): keeps the load ceiling and every capacity product finite.
MAX_CAPACITY_TPM_PER_MACHINE = 1e9
#: Largest load accepted where a config names one (tpm): `peak_tpm`, `max_load_tpm`.
MAX_LOAD_TPM = 1e15


class ConfigError(UserError):
    """A configuration that cannot be used: one line naming the file, the field and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Strict):
    host: str = Field("127.0.0.1", min_length=1, description="address of the metrics/health HTTP server")
    port: int = Field(9108, ge=0, le=65535, description="its TCP port; 0 picks a free one (logged at start)")


# --- metric sources (discriminated on `kind`) -------------------------------------------------------------
class SimulatorSourceConfig(_Strict):
    kind: Literal["simulator"]
    seed: int = Field(0, ge=0, description="seed of the synthetic load (sim.load.synthetic_load)")
    peak_tpm: float | None = Field(
        None, gt=0, le=MAX_LOAD_TPM, description="rescale the load so its maximum is this (tpm)"
    )
    minutes: int = Field(20_160, ge=2, le=525_600, description="length of the generated load; it then repeats")


class CsvSourceConfig(_Strict):
    kind: Literal["csv"]
    path: Path = Field(description="a `timestamp,requests` per-minute CSV (relative to the config file)")
    peak_tpm: float | None = Field(
        None, gt=0, le=MAX_LOAD_TPM, description="rescale the trace so its maximum is this (tpm)"
    )
    fill_gaps: bool = Field(False, description="interpolate missing minutes instead of refusing the trace")
    loop: bool = Field(True, description="start again at the first minute after the last one")


class PrometheusBasicAuth(_Strict):
    username: str = Field(min_length=1, max_length=256, description="basic-auth user name")
    password_file: Path | None = Field(
        None, description="file holding the password (e.g. a mounted secret; relative to the config file)"
    )
    password_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="environment variable holding the password"
    )

    @model_validator(mode="after")
    def _one_password(self) -> PrometheusBasicAuth:
        if (self.password_file is None) == (self.password_env is None):
            raise ValueError("basic_auth: give exactly one of password_file or password_env")
        return self


class PrometheusSourceConfig(_Strict):
    kind: Literal["prometheus"]
    url: str = Field(description="base URL of the Prometheus HTTP API, e.g. http://prometheus:9090")
    query: str = Field(
        min_length=1, pattern=r"\S", description="PromQL expression whose value is transactions per minute (not blank)"
    )
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    bearer_token_file: Path | None = Field(
        None, description="file holding a bearer token, sent as `Authorization: Bearer` (relative to the config file)"
    )
    basic_auth: PrometheusBasicAuth | None = Field(None, description="HTTP basic auth with a password kept apart")

    @model_validator(mode="after")
    def _one_auth(self) -> PrometheusSourceConfig:
        ways = [
            n
            for n, on in (
                ("credentials in url", "@" in urllib.parse.urlsplit(self.url).netloc),
                ("bearer_token_file", self.bearer_token_file is not None),
                ("basic_auth", self.basic_auth is not None),
            )
            if on
        ]
        if len(ways) > 1:
            raise ValueError(f"authenticate one way only, got {' and '.join(ways)}")
        return self

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
    initial_machines: int = Field(50, ge=0, le=MAX_FLEET_MACHINES, description="active machines at start (seed: 50)")
    max_machines: int = Field(
        833, ge=1, le=MAX_FLEET_MACHINES, description="the simulated group's own maximum (seed: 833)"
    )
    capacity_sigma_tpm: float = Field(30.0, ge=0, description="std. dev. of per-machine capacity (seed: 30)")
    max_scale_out_per_minute: int = Field(
        10, ge=1, le=MAX_FLEET_MACHINES, description="machines the world can start per minute (seed: 10)"
    )
    max_scale_in_per_minute: int = Field(
        10, ge=1, le=MAX_FLEET_MACHINES, description="machines the world can stop per minute (seed: 10)"
    )

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
    min_machines: int = Field(1, ge=0, le=MAX_FLEET_MACHINES)
    max_machines: int = Field(100, ge=1, le=MAX_FLEET_MACHINES)
    capacity_tpm_per_machine: float = Field(300.0, gt=0, le=MAX_CAPACITY_TPM_PER_MACHINE)
    max_load_tpm: float | None = Field(
        None,
        gt=0,
        le=MAX_LOAD_TPM,
        description="readings above this are bad data (implausible); default "
        f"{IMPLAUSIBLE_LOAD_FACTOR} x max_machines x capacity_tpm_per_machine",
    )
    warmup_minutes: int = Field(5, ge=0, le=120)
    max_scale_out_per_tick: int = Field(10, ge=0, le=MAX_FLEET_MACHINES)
    max_scale_in_per_tick: int = Field(10, ge=0, le=MAX_FLEET_MACHINES)
    scale_in_stabilization_minutes: int = Field(5, ge=0, le=MAX_STABILIZATION_MINUTES)
    block_scale_in_while_warming: bool = True
    stale_after_seconds: float = Field(180.0, gt=0)
    bad_data_ticks_before_fallback: int = Field(3, ge=1, le=1_000_000)
    paused: bool = False
    shadow_policies: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="policies computed every tick on the same load, never written (controller.shadow)",
    )
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

    @field_validator("shadow_policies")
    @classmethod
    def _shadows_known(cls, v: list[str]) -> list[str]:
        for i, spec in enumerate(v):
            try:
                cls._policy_known(spec)
            except ValueError as exc:
                raise ValueError(f"[{i}]: {exc}") from None
            if spec in v[:i]:
                raise ValueError(f"[{i}]: {spec!r} is listed twice")
        return v

    @property
    def simulated_clock(self) -> bool:
        return self.source.kind in SIMULATED_SOURCES

    @property
    def load_ceiling_tpm(self) -> float:
        """Readings above this load are bad data (`implausible`): `max_load_tpm`, or by default a load that
        would need IMPLAUSIBLE_LOAD_FACTOR times the group's `max_machines`."""
        if self.max_load_tpm is not None:
            return float(self.max_load_tpm)
        return IMPLAUSIBLE_LOAD_FACTOR * self.max_machines * self.capacity_tpm_per_machine


class LeaderElectionConfig(_Strict):
    """A lease in DynamoDB: only its holder reads the groups, decides and writes (controller.lease)."""

    table: str = Field(
        min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$", description="the DynamoDB table of the lease"
    )
    lease_name: str = Field(
        "fleetpilot", min_length=1, max_length=255, description="the lease's key: one per set of daemons"
    )
    region: str = Field("us-east-1", min_length=1)
    endpoint_url: str | None = Field(None, description="override the DynamoDB endpoint (tests, VPC endpoints)")
    lease_seconds: float = Field(30.0, ge=1, le=3600, description="how long a lease lasts without a renewal")
    renew_seconds: float = Field(10.0, gt=0, le=1800, description="how often the holder renews it")
    holder_id: str | None = Field(
        None, min_length=1, max_length=255, description="this daemon's name in the lease; default host:pid"
    )

    @model_validator(mode="after")
    def _renew_often(self) -> LeaderElectionConfig:
        if not self.renew_seconds < self.lease_seconds / 2:
            raise ValueError(
                f"renew_seconds ({self.renew_seconds:g}) must be under half of lease_seconds "
                f"({self.lease_seconds:g}): a renewal may fail once without losing the lease"
            )
        return self


class DaemonConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    interval_seconds: float = Field(60.0, gt=0, le=3600, description="time between ticks")
    dry_run: bool = Field(False, description="run everything but the backend write")
    journal_path: Path = Field(
        default_factory=default_journal_path,
        description="SQLite decision journal (default: the state directory, see controller.state)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    server: ServerConfig = Field(default_factory=ServerConfig)
    groups: list[GroupConfig] = Field(min_length=1)
    leader_election: LeaderElectionConfig | None = Field(
        None, description="run as one of several daemons: only the holder of a DynamoDB lease writes"
    )

    @field_validator("journal_path", mode="before")
    @classmethod
    def _journal_not_empty(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty")
        return v

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

    def with_dry_run(self, flag: bool) -> DaemonConfig:
        """The one place dry-run is resolved: the command line's `--dry-run` turns it on, never off (the file and
        `FLEETPILOT_DRY_RUN` are already in `dry_run`). The daemon and its logs then read `dry_run` only."""
        return self.model_copy(update={"dry_run": True}) if flag and not self.dry_run else self

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
    """The config file's mapping: a regular file of at most 1 MiB (a FIFO or /dev/zero is refused, not read),
    UTF-8 (a byte-order mark is allowed), YAML without duplicate keys."""
    try:
        text = read_regular(path, MAX_CONFIG_BYTES).decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, FileReadError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = load_yaml(text)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc}") from None
    except yaml.YAMLError as exc:
        line, problem = yaml_problem(exc)
        raise ConfigError(f"{path}{'' if line is None else f':{line}'}: not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top, found {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:  # `? ` or `1: x` at the top: a key that cannot name a field
        raise ConfigError(f"{path}: expected field names at the top, found the key {bad[0]!r}")
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
    except StateDirError as exc:  # no journal_path and nowhere to put the journal by default
        raise ConfigError(f"{path}: journal_path: {exc}") from None
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
        if isinstance(g.source, PrometheusSourceConfig):
            _resolve_prometheus_auth(path, base, i, g.source)
        _check_policy_params(path, i, g)
    return cfg


def check_runnable(cfg: DaemonConfig, where: str | Path) -> None:
    """What `fleetpilot config check` and `fleetpilot run` both refuse beyond the schema, with the same line: a
    journal path the daemon cannot write (see controller.journal.check_journal_path) and a model directory
    that does not exist or fails its checks (manifest, observation version, sha256)."""
    from fleetpilot.controller.journal import JournalError, check_journal_path

    try:
        check_journal_path(cfg.journal_path)
    except JournalError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    from fleetpilot.policies.onnx_policy import ModelError, verify
    from fleetpilot.policies.registry import PolicyError, model_dir

    for i, g in enumerate(cfg.groups):
        for j, spec in enumerate(g.shadow_policies):  # a shadow model is checked as the live one is
            if spec in RULE_POLICIES or (spec == "default" and model_dir(spec) is None):
                continue
            try:
                verify(model_dir(spec) or Path(spec))
            except (PolicyError, ModelError) as exc:
                raise ConfigError(f"{where}: groups[{i}].shadow_policies[{j}]: {exc}") from None
        if g.policy in RULE_POLICIES:
            continue
        try:
            d = model_dir(g.policy)
            if d is None:
                if g.policy == "default":  # not shipped in this installation: its groups use the fallback rule
                    continue
                raise PolicyError(f"unknown policy {g.policy!r}")
            verify(d)
        except (PolicyError, ModelError) as exc:
            raise ConfigError(f"{where}: groups[{i}].policy: {exc}") from None


def _resolve_prometheus_auth(path: Path, base: Path, i: int, src: PrometheusSourceConfig) -> None:
    """Resolve the secret files against the config's directory and read each once, so a missing, unreadable,
    empty or unset secret is refused by `config check` (the value itself is never kept in the config)."""
    where = f"{path}: groups[{i}].source"
    if src.bearer_token_file is not None:
        if not src.bearer_token_file.is_absolute():
            src.bearer_token_file = base / src.bearer_token_file
        read_secret_file(src.bearer_token_file, f"{where}.bearer_token_file")
    if src.basic_auth is not None:
        auth = src.basic_auth
        if auth.password_file is not None:
            if not auth.password_file.is_absolute():
                auth.password_file = base / auth.password_file
            read_secret_file(auth.password_file, f"{where}.basic_auth.password_file")
        elif not os.environ.get(auth.password_env or ""):
            raise ConfigError(f"{where}.basic_auth.password_env: environment variable {auth.password_env} is not set")


def read_secret_file(p: Path, what: str) -> str:
    """A secret from a file (a regular file of at most 64 KiB, UTF-8, surrounding whitespace dropped)."""
    try:
        value = read_regular(p, MAX_SECRET_BYTES).decode("utf-8-sig").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file {p}") from None
    except (OSError, UnicodeDecodeError, FileReadError) as exc:
        raise ConfigError(f"{what}: {p}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not value:
        raise ConfigError(f"{what}: {p} is empty")
    return value


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
#: Fields that name where a secret is (a file, an environment variable), not the secret: shown as they are.
_SECRET_REF = re.compile(r"_(file|env)$|^(bearer_token_file|basic_auth|username)$", re.I)


def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy of a plain-data config with anything that looks like a credential replaced by '***': values of
    secret-looking keys, URL userinfo, secret-looking query parameters, echoed headers (logs.redact)."""
    from fleetpilot.controller.logs import redact

    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str):
        if key and _SECRET_KEY.search(key) and not _SECRET_REF.search(key):
            return "***"
        return redact(value)
    return value


def masked_dump(cfg: DaemonConfig) -> dict[str, Any]:
    return mask_secrets(json.loads(json.dumps(cfg.model_dump(mode="json"))))


def _synthetic_trained(policy: str) -> bool:
    """Whether `policy` is a model trained on the synthetic load only: every entry of its manifest's
    `training.loads` names the synthetic generator (the shipped `synthetic`, a copy of it, or a model trained with
    plain `fleetpilot train`). Rules, and models trained on a trace or the broad mixture, are not."""
    from fleetpilot.policies.onnx_policy import ModelError, read_manifest
    from fleetpilot.policies.registry import PolicyError, model_dir

    try:
        d = model_dir(policy)
        loads = read_manifest(d)["training"]["loads"] if d is not None else []
    except (PolicyError, ModelError, KeyError, TypeError):
        return False  # not a readable model: check_runnable says what is wrong with it
    return bool(loads) and all(isinstance(x, dict) and "synthetic" in x for x in loads)


def advisories(cfg: DaemonConfig) -> list[str]:
    """Notes on a valid config that an operator would want before trusting it with capacity: printed by
    `config check` (stderr), logged as warnings when the daemon starts. Nothing here refuses a config."""
    return [
        f"group {g.name}: policy {g.policy} was trained on the synthetic load only, and its source "
        f"is {g.source.kind}: on the real development traces it never saw, the newsvendor rule did better on "
        "every one (README, 'Which policy for a real group')"
        for g in cfg.groups
        if g.source.kind != "simulator" and _synthetic_trained(g.policy)
    ]


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
        + (
            f"; leader election on DynamoDB table {cfg.leader_election.table} ({cfg.leader_election.region})"
            if cfg.leader_election is not None
            else ""
        )
    )
