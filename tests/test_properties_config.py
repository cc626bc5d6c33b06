"""Config files, property-based: every valid config (drawn from the schema's ranges) is accepted with its
values; every invalid one is a one-line ConfigError naming the file and the field, and `fleetpilot config
check` answers it with exit code 2 and that one line (no traceback); junk (any text, any bytes, any nesting)
is a ConfigError too, never another exception."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fleetpilot.controller.cli import main as cli_main
from fleetpilot.controller.config import RULE_POLICIES, ConfigError, DaemonConfig, load_config
from tests.mutate import DELETE, set_path, write_junk

#: PROPERTY_EXAMPLES=1000 for a longer hunt (CI runs the default).
SETTINGS = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TRACE = "timestamp,requests\n2026-01-05T00:00:00Z,100\n2026-01-05T00:01:00Z,120\n"


@pytest.fixture(autouse=True, scope="module")
def _no_fleetpilot_env():
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.upper().startswith("FLEETPILOT_")}
    yield
    os.environ.update(saved)


# -- strategies: valid configs from the schema's ranges -----------------------------------------------------
printable = st.characters(whitelist_categories=("L", "N", "P", "S", "Zs"))
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
pos_float = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)
host = st.sampled_from(["prometheus", "127.0.0.1", "prom.example.com", "[::1]", "p-1.internal"])


@st.composite
def simulated_source(draw):
    if draw(st.booleans()):
        return {
            "kind": "simulator",
            "seed": draw(st.integers(0, 2**31)),
            "minutes": draw(st.integers(2, 525_600)),
            "peak_tpm": draw(st.none() | pos_float),
        }
    return {
        "kind": "csv",
        "path": "trace.csv",
        "peak_tpm": draw(st.none() | pos_float),
        "fill_gaps": draw(st.booleans()),
        "loop": draw(st.booleans()),
    }


@st.composite
def real_source(draw):
    if draw(st.booleans()):
        auth = draw(st.sampled_from(["", "alice:s3cret@", "bob@"]))
        port = draw(st.sampled_from(["", ":9090", ":443", ":65535"]))
        path = draw(st.sampled_from(["", "/", "/prom", "/a/b/"]))
        return {
            "kind": "prometheus",
            "url": f"{draw(st.sampled_from(['http', 'https']))}://{auth}{draw(host)}{port}{path}",
            "query": draw(st.text(printable, min_size=1, max_size=40).filter(lambda q: q.strip())),
            "timeout_seconds": draw(st.floats(min_value=1e-3, max_value=60)),
        }
    stat = draw(st.sampled_from(["Sum", "Average", "Maximum", "Minimum", "SampleCount", "p99", "p50", "p99.9"]))
    return {
        "kind": "cloudwatch",
        "namespace": draw(st.text(printable, min_size=1, max_size=20)),
        "metric_name": draw(st.text(printable, min_size=1, max_size=20)),
        "dimensions": draw(
            st.dictionaries(st.text(printable, min_size=1, max_size=8), st.text(printable, max_size=8), max_size=3)
        ),
        "statistic": stat,
        "region": draw(st.sampled_from(["us-east-1", "eu-west-3"])),
        "endpoint_url": draw(st.none() | st.just("http://127.0.0.1:5000")),
        "timeout_seconds": draw(st.floats(min_value=1e-3, max_value=60)),
    }


@st.composite
def backend(draw):
    if draw(st.booleans()):
        mx = draw(st.integers(1, 5000))
        return {
            "kind": "simulated",
            "seed": draw(st.integers(0, 2**31)),
            "max_machines": mx,
            "initial_machines": draw(st.integers(0, mx)),
            "capacity_sigma_tpm": draw(st.floats(0, 1000)),
            "max_scale_out_per_minute": draw(st.integers(1, 100)),
            "max_scale_in_per_minute": draw(st.integers(1, 100)),
        }
    return {
        "kind": "ec2-asg",
        "group_name": draw(st.text(printable, min_size=1, max_size=30)),
        "region": draw(st.sampled_from(["us-east-1", "ap-south-1"])),
        "max_retries": draw(st.integers(0, 20)),
        "retry_base_seconds": draw(st.floats(0, 30)),
    }


@st.composite
def group_config(draw, name: str, simulated: bool):
    lo = draw(st.integers(0, 1000))
    return {
        "name": name,
        "policy": draw(st.sampled_from(RULE_POLICIES + ("default",))),
        "fallback_policy": draw(st.sampled_from(RULE_POLICIES)),
        "min_machines": lo,
        "max_machines": draw(st.integers(max(lo, 1), lo + 1000)),
        "capacity_tpm_per_machine": draw(pos_float),
        "warmup_minutes": draw(st.integers(0, 120)),
        "max_scale_out_per_tick": draw(st.integers(0, 100)),
        "max_scale_in_per_tick": draw(st.integers(0, 100)),
        "scale_in_stabilization_minutes": draw(st.integers(0, 1440)),
        "block_scale_in_while_warming": draw(st.booleans()),
        "stale_after_seconds": draw(st.floats(min_value=1e-3, max_value=1e5)),
        "bad_data_ticks_before_fallback": draw(st.integers(1, 100)),
        "paused": draw(st.booleans()),
        "source": draw(simulated_source() if simulated else real_source()),
        "backend": draw(backend()),
    }


@st.composite
def valid_config(draw):
    simulated = draw(st.booleans())
    group_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    cfg = {
        "interval_seconds": draw(st.floats(min_value=1e-3, max_value=3600) if simulated else st.integers(1, 3600)),
        "dry_run": draw(st.booleans()),
        "journal_path": draw(st.sampled_from(["j.sqlite", "data/journal.sqlite"])),
        "log_level": draw(st.sampled_from(["DEBUG", "info", "Warning", "ERROR"])),
        "server": {
            "host": draw(st.sampled_from(["127.0.0.1", "0.0.0.0", "::", "localhost"])),
            "port": draw(st.integers(0, 65535)),
        },
        "groups": [draw(group_config(n, simulated)) for n in group_names],
    }
    # optional fields may be left out: the defaults are valid too
    for g in cfg["groups"]:
        for key in draw(st.sets(st.sampled_from(["fallback_policy", "warmup_minutes", "paused", "policy"]))):
            del g[key]
    return cfg


def write(d: Path, data, name: str = "fleetpilot.yaml") -> Path:
    (d / "trace.csv").write_text(TRACE)
    p = d / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return p


@SETTINGS
@given(valid_config())
def test_every_valid_config_is_accepted_with_its_values(data):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(write(Path(tmp), data))
    assert isinstance(cfg, DaemonConfig)
    assert cfg.interval_seconds == data["interval_seconds"] and cfg.server.port == data["server"]["port"]
    assert cfg.log_level == data["log_level"].upper()
    for g, want in zip(cfg.groups, data["groups"], strict=False):
        assert (g.name, g.min_machines, g.max_machines) == (want["name"], want["min_machines"], want["max_machines"])
        assert g.source.kind == want["source"]["kind"] and g.backend.kind == want["backend"]["kind"]
        assert g.capacity_tpm_per_machine == want["capacity_tpm_per_machine"]


# -- invalid configs: one change that breaks a valid one, with the field the message must name -------------
not_an_int = st.sampled_from(["abc", "", [1], {"a": 1}, "1.5", 2.5, "ten"])
not_a_number = st.sampled_from(["abc", "", [1], {"a": 1}, "fast"])


def _field(path: str) -> str:
    """groups.0.source.url -> groups[0].source.url (the message's spelling)."""
    out = ""
    for k in path.split("."):
        out += f"[{k}]" if k.isdigit() else ("." if out else "") + k
    return out


@st.composite
def broken_config(draw):
    """(data, the field path the error must name)."""
    base = draw(valid_config())
    d = copy.deepcopy(base)
    g0 = d["groups"][0]
    simulated = g0["source"]["kind"] in ("simulator", "csv")
    case = draw(
        st.sampled_from(
            [
                "range",
                "type",
                "unknown",
                "missing",
                "enum",
                "min_gt_max",
                "duplicate",
                "mixed",
                "fraction",
                "fallback",
                "policy",
                "name",
                "url",
                "statistic",
                "initial",
            ]
        )
    )
    if case == "range":
        path, bad = draw(
            st.sampled_from(
                [
                    ("groups.0.min_machines", st.integers(-(10**6), -1)),
                    ("groups.0.max_machines", st.integers(-(10**6), 0)),
                    ("groups.0.warmup_minutes", st.integers(121, 10**6) | st.integers(-100, -1)),
                    ("groups.0.scale_in_stabilization_minutes", st.integers(1441, 10**6)),
                    ("groups.0.stale_after_seconds", st.floats(max_value=0, allow_nan=False)),
                    ("groups.0.bad_data_ticks_before_fallback", st.integers(-100, 0)),
                    ("groups.0.capacity_tpm_per_machine", st.floats(max_value=0, allow_nan=False)),
                    ("groups.0.max_scale_out_per_tick", st.integers(-100, -1)),
                    (
                        "interval_seconds",
                        st.floats(max_value=0, allow_nan=False) | st.floats(min_value=3600.5, max_value=1e9),
                    ),
                    ("server.port", st.integers(65536, 10**6) | st.integers(-(10**6), -1)),
                ]
            )
        )
        set_path(d, path, draw(bad))
        return d, _field(path)
    if case == "type":
        path = draw(
            st.sampled_from(
                ["groups.0.min_machines", "groups.0.warmup_minutes", "server.port", "groups.0.max_scale_in_per_tick"]
            )
        )
        set_path(d, path, draw(not_an_int))
        return d, _field(path)
    if case == "unknown":
        where = draw(st.sampled_from(["", "groups.0", "groups.0.source", "groups.0.backend", "server"]))
        key = draw(st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True))
        node = d
        for k in filter(None, where.split(".")):
            node = node[int(k) if k.isdigit() else k]
        known = set(node) | {
            "kind",
            "url",
            "query",
            "path",
            "seed",
            "name",
            "policy",
            "groups",
            "server",
            "source",
            "backend",
            "host",
            "port",
            "minutes",
        }
        known |= set(DaemonConfig.model_fields)
        assume(key not in known and key.upper() not in {k.upper() for k in known})
        node[key] = 1
        return d, _field(f"{where}.{key}" if where else key)
    if case == "missing":
        path = draw(
            st.sampled_from(["groups", "groups.0.source", "groups.0.backend", "groups.0.name", "groups.0.source.kind"])
        )
        set_path(d, path, DELETE)
        return d, _field(path.removesuffix(".kind"))
    if case == "enum":
        path = draw(st.sampled_from(["log_level", "groups.0.source.kind", "groups.0.backend.kind"]))
        word = draw(st.from_regex(r"[a-z]{3,10}", fullmatch=True))
        assume(
            word.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR")
            and word not in ("simulator", "csv", "prometheus", "cloudwatch", "simulated")
        )
        set_path(d, path, word)
        return d, _field(path.removesuffix(".kind"))
    if case == "min_gt_max":
        g0["min_machines"] = g0["max_machines"] + draw(st.integers(1, 100))
        return d, "groups[0].max_machines"
    if case == "duplicate":
        d["groups"].append(copy.deepcopy(g0))
        return d, f"groups[{len(d['groups']) - 1}].name"
    if case == "mixed":
        other = copy.deepcopy(g0)
        other["name"] = g0["name"] + "-x"
        other["source"] = (
            {"kind": "prometheus", "url": "http://p:9090", "query": "q"} if simulated else {"kind": "simulator"}
        )
        d["groups"].append(other)
        d["interval_seconds"] = 60
        return d, f"groups[{len(d['groups']) - 1}].source.kind"
    if case == "fraction":
        assume(not simulated)
        d["interval_seconds"] = draw(st.integers(1, 3000)) + 0.5
        return d, "interval_seconds"
    if case == "fallback":
        g0["fallback_policy"] = draw(st.sampled_from(["default", "models/x", "nope", ""]))
        return d, "groups[0].fallback_policy"
    if case == "policy":
        word = draw(st.from_regex(r"[a-z][a-z0-9-]{2,12}", fullmatch=True))
        assume(word not in RULE_POLICIES + ("default",))
        g0["policy"] = word
        return d, "groups[0].policy"
    if case == "name":
        g0["name"] = draw(st.sampled_from(["", "-lead", "has space", "x" * 64, "semi;colon", "ünï"]))
        return d, "groups[0].name"
    if case == "url":
        d["interval_seconds"] = 60
        g0["source"] = {
            "kind": "prometheus",
            "query": "q",
            "url": draw(
                st.sampled_from(
                    [
                        "prometheus:9090",
                        "ftp://host",
                        "http://",
                        "http://host:notaport",
                        "http://:9090",
                        "http://h:99999",
                        "//host:9090",
                        "http:/host",
                    ]
                )
            ),
        }
        for g in d["groups"][1:]:
            g["source"] = {"kind": "prometheus", "url": "http://p:9090", "query": "q"}
        return d, "groups[0].source.url"
    if case == "statistic":
        d["interval_seconds"] = 60
        g0["source"] = {
            "kind": "cloudwatch",
            "namespace": "n",
            "metric_name": "m",
            "statistic": draw(st.sampled_from(["sum", "P99", "p", "p999", "median", ""])),
        }
        for g in d["groups"][1:]:
            g["source"] = {"kind": "prometheus", "url": "http://p:9090", "query": "q"}
        return d, "groups[0].source.statistic"
    # initial machines above the simulated group's own maximum
    g0["backend"] = {"kind": "simulated", "max_machines": draw(st.integers(1, 100))}
    g0["backend"]["initial_machines"] = g0["backend"]["max_machines"] + draw(st.integers(1, 100))
    return d, "groups[0].backend"


def check_cli(path: Path) -> str:
    """`fleetpilot config check` in process: exit code 2 and exactly one line on stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(["config", "check", str(path)])
    lines = err.getvalue().splitlines()
    assert rc == 2 and out.getvalue() == "" and len(lines) == 1, (rc, err.getvalue())
    assert lines[0].startswith("fleetpilot config: error: ") and "Traceback" not in lines[0]
    return lines[0]


@SETTINGS
@given(broken_config())
def test_every_invalid_config_is_one_line_naming_the_field(case):
    data, field = case
    with tempfile.TemporaryDirectory() as tmp:
        p = write(Path(tmp), data)
        with pytest.raises(ConfigError) as info:
            load_config(p)
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"{p}"), msg
        assert f": {field}: " in msg or f": {field}." in msg or f": {field}[" in msg, (field, msg)
        assert "s3cret" not in msg  # a password in a URL is never quoted
        assert check_cli(p).endswith(msg)


junk_yaml = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(printable, max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(printable, max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@SETTINGS
@given(
    st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300),
        junk_yaml.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
        st.dictionaries(
            st.sampled_from(["groups", "server", "interval_seconds", "dry_run", "log_level"]), junk_yaml, min_size=1
        ).map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    )
)
@example("groups:\n- name: web\n  source: {kind: simulator}\n  backend: {kind: simulated}\n")  # accepted
def test_junk_is_a_config_error_never_a_crash(content):
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "junk.yaml"
        write_junk(p, content)
        try:
            cfg = load_config(p)
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(p))
            check_cli(p)
        else:
            # accepted: then it is a whole, consistent config, and `config check` says so
            assert isinstance(cfg, DaemonConfig) and cfg.groups
            assert len({g.name for g in cfg.groups}) == len(cfg.groups)
            assert 0 < cfg.interval_seconds <= 3600 and cfg.journal_path.is_absolute()
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = cli_main(["config", "check", str(p)])
            assert rc == 0 and out.getvalue().startswith(f"OK {p}"), (rc, err.getvalue())
