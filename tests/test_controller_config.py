"""Config: YAML + FLEETPILOT_ env, refused fields, one-line errors naming the field, `config check`."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleetpilot.controller.config import ConfigError, advisories, load_config, mask_secrets, masked_dump, summary
from fleetpilot.controller.state import default_journal_path
from fleetpilot.policies.registry import MODELS_DIR

REPO = Path(__file__).resolve().parents[1]
FLEETPILOT = str(Path(sys.executable).parent / "fleetpilot")

BASE = {
    "interval_seconds": 0.05,
    "server": {"host": "127.0.0.1", "port": 0},
    "groups": [
        {
            "name": "web",
            "policy": "target-tracking",
            "min_machines": 1,
            "max_machines": 100,
            "source": {"kind": "simulator", "seed": 0},
            "backend": {"kind": "simulated", "seed": 0, "initial_machines": 50},
        }
    ],
}


def write(tmp_path: Path, data: dict, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def mutate(path: str, value) -> dict:
    """BASE with one field set: path like 'groups.0.max_machines'; value DELETE removes the field."""
    d = copy.deepcopy(BASE)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = d
    for k in keys[:-1]:
        node = node[k]
    if value == "DELETE":
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return d


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.upper().startswith("FLEETPILOT_"):
            monkeypatch.delenv(k)


def test_valid_config_and_defaults(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    g = cfg.groups[0]
    assert cfg.simulated_clock and cfg.dry_run is False and cfg.log_level == "INFO"
    # no journal_path: the state directory (XDG_STATE_HOME is a temporary directory in tests), not the config's
    assert cfg.journal_path == default_journal_path() and cfg.journal_path.name == "journal.sqlite"
    assert tmp_path not in cfg.journal_path.parents
    assert (g.fallback_policy, g.warmup_minutes, g.max_scale_out_per_tick, g.stale_after_seconds) == (
        "target-tracking",
        5,
        10,
        180.0,
    )
    assert "web (target-tracking, simulator -> simulated, 1..100)" in summary(cfg)


@pytest.mark.parametrize(
    "path, value, field, reason",
    [
        ("groups.0.max_machines", 0, "groups[0].max_machines", "greater than or equal to 1"),
        ("groups.0.min_machines", 200, "groups[0].max_machines", "below min_machines"),
        ("groups.0.fallback_policy", "default", "groups[0].fallback_policy", "must be a rule policy"),
        ("groups.0.policy", "no-such-policy", "groups[0].policy", "unknown policy"),
        ("groups.0.warmup_minutes", -1, "groups[0].warmup_minutes", "greater than or equal to 0"),
        ("groups.0.capacity_tpm_per_machine", 0, "groups[0].capacity_tpm_per_machine", "greater than 0"),
        ("groups.0.bogus", 1, "groups[0].bogus", "unknown field"),
        ("groups.0.source.kind", "kafka", "groups[0].source", "does not match any of the expected tags"),
        ("groups.0.source", {"kind": "prometheus", "query": "x"}, "groups[0].source.url", "required field is missing"),
        ("groups.0.source", {"kind": "prometheus", "url": "ftp://x", "query": "q"}, "groups[0].source.url", "http"),
        ("groups.0.source", {"kind": "csv", "path": "missing.csv"}, "groups[0].source.path", "no such file"),
        ("groups.0.source.seed", "abc", "groups[0].source.seed", "valid integer"),
        ("groups.0.backend.initial_machines", 900, "groups[0].backend", "exceeds max_machines"),
        ("groups.0.backend", {"kind": "ec2-asg"}, "groups[0].backend.group_name", "required field is missing"),
        ("groups.0.policy_params", {"target_utilization": 2}, "groups[0].policy_params", "target_utilization"),
        ("groups.0.name", "bad name!", "groups[0].name", "pattern"),
        ("groups", [], "groups", "at least 1 item"),
        ("groups", "DELETE", "groups", "required field is missing"),
        ("interval_seconds", 0, "interval_seconds", "greater than 0"),
        ("log_level", "LOUD", "log_level", "DEBUG"),
        ("server.port", 70000, "server.port", "less than or equal to 65535"),
        ("surprise", True, "surprise", "unknown field"),
    ],
)
def test_bad_config_names_the_field(tmp_path, path, value, field, reason):
    p = write(tmp_path, mutate(path, value))
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: {field}: "), msg
    assert reason in msg and "\n" not in msg


def test_fractional_interval_needs_simulated_sources(tmp_path):
    d = mutate("groups.0.source", {"kind": "prometheus", "url": "http://p:9090", "query": "sum(rate(x[1m]))*60"})
    with pytest.raises(ConfigError, match=r"interval_seconds: 0.05 is a fraction of a second"):
        load_config(write(tmp_path, d))
    d["interval_seconds"] = 60
    assert not load_config(write(tmp_path, d)).simulated_clock


def test_duplicate_names_and_mixed_clocks_are_refused(tmp_path):
    d = copy.deepcopy(BASE)
    d["groups"].append(copy.deepcopy(d["groups"][0]))
    with pytest.raises(ConfigError, match=r"groups\[1\]\.name: duplicate group name 'web'"):
        load_config(write(tmp_path, d))
    d["groups"][1]["name"] = "api"
    d["groups"][1]["source"] = {"kind": "prometheus", "url": "http://p:9090", "query": "q"}
    with pytest.raises(ConfigError, match=r"groups\[1\]\.source\.kind: simulated sources"):
        load_config(write(tmp_path, d))


def test_yaml_errors_are_one_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("groups: [\n  - name: x\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml")


def test_env_overrides_yaml_nested_and_refuses_unknown_names(tmp_path, monkeypatch):
    p = write(tmp_path, BASE)
    monkeypatch.setenv("FLEETPILOT_DRY_RUN", "true")
    monkeypatch.setenv("FLEETPILOT_SERVER__PORT", "9200")
    monkeypatch.setenv("FLEETPILOT_JOURNAL_PATH", str(tmp_path / "j.sqlite"))
    cfg = load_config(p)
    assert cfg.dry_run is True and cfg.server.port == 9200 and cfg.server.host == "127.0.0.1"
    assert cfg.journal_path == tmp_path / "j.sqlite"
    monkeypatch.setenv("FLEETPILOT_SERVER__PORT", "-1")
    with pytest.raises(ConfigError, match=r"\(with FLEETPILOT_SERVER__PORT\): server\.port: "):
        load_config(p)
    monkeypatch.delenv("FLEETPILOT_SERVER__PORT")
    monkeypatch.setenv("FLEETPILOT_DRYRUN", "true")  # a typo must not be ignored
    with pytest.raises(ConfigError, match="FLEETPILOT_DRYRUN: unknown field 'dryrun' .did you mean FLEETPILOT_DRY_RUN"):
        load_config(p)
    monkeypatch.delenv("FLEETPILOT_DRYRUN")
    monkeypatch.setenv("FLEETPILOT_PROMETHEUS_BIN", "/usr/bin/prometheus")  # another tool's variable
    assert load_config(p).ignored_env == ["FLEETPILOT_PROMETHEUS_BIN"]


def test_secrets_are_masked_in_the_logged_config(tmp_path):
    d = mutate(
        "groups.0.source", {"kind": "prometheus", "url": "https://bob:hunter2@prom:9090/?token=abc", "query": "q"}
    )
    d["interval_seconds"] = 60
    dumped = str(masked_dump(load_config(write(tmp_path, d))))
    assert "hunter2" not in dumped and "abc" not in dumped and "https://***@prom" in dumped
    assert mask_secrets({"aws_secret_access_key": "x", "n": 1, "l": ["http://a:b@h"]}) == {
        "aws_secret_access_key": "***",
        "n": 1,
        "l": ["http://***@h"],  # the whole userinfo: a user name alone may be a token
    }


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([FLEETPILOT, *args], capture_output=True, text=True, timeout=60, env=env)


def test_config_check_cli(tmp_path):
    ok = run_cli("config", "check", str(write(tmp_path, BASE)))
    assert ok.returncode == 0 and ok.stdout.startswith("OK ") and "1 group: web" in ok.stdout
    bad = run_cli("config", "check", str(write(tmp_path, mutate("groups.0.max_machines", -3), "bad.yaml")))
    assert bad.returncode == 2 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in bad.stderr
    assert "bad.yaml: groups[0].max_machines: " in lines[0] and lines[0].startswith("fleetpilot config: error:")
    run = run_cli("run", "--config", str(tmp_path / "bad.yaml"), "--once")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_example_configs_check():
    ok = run_cli("config", "check", str(REPO / "examples" / "simulator.yaml"))
    assert ok.returncode == 0, ok.stderr
    cfg = load_config(REPO / "examples" / "simulator.yaml")
    g = cfg.groups[0]
    assert (g.policy, g.fallback_policy, g.source.kind, g.backend.kind) == (
        "default",
        "target-tracking",
        "simulator",
        "simulated",
    )
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 9108) and cfg.interval_seconds < 1


def test_config_check_notes_a_synthetic_trained_model_on_a_real_source(tmp_path):
    """The shipped `synthetic` model was trained on the simulator's load only: on a real source `config check`
    says so (exit 0, the config is valid); on the simulator, with a rule, or with the shipped `default` (trained
    on the broad mixture, real traces included) it says nothing."""
    real = mutate("groups.0.source", {"kind": "prometheus", "url": "http://127.0.0.1:9090", "query": "up"})
    real["groups"][0]["policy"], real["interval_seconds"] = "synthetic", 60
    cfg = load_config(write(tmp_path, real, "real.yaml"))
    notes = advisories(cfg)
    assert len(notes) == 1 and "group web: policy synthetic" in notes[0] and "newsvendor" in notes[0]
    sim = mutate("groups.0.policy", "synthetic")
    assert advisories(load_config(write(tmp_path, sim, "sim.yaml"))) == []
    real["groups"][0]["policy"] = str(MODELS_DIR / "synthetic")  # the same model by its directory
    assert len(advisories(load_config(write(tmp_path, real, "path.yaml")))) == 1
    copy_dir = tmp_path / "model"  # a copy: the manifest says what it was trained on
    shutil.copytree(MODELS_DIR / "synthetic", copy_dir)
    real["groups"][0]["policy"] = str(copy_dir)
    assert len(advisories(load_config(write(tmp_path, real, "copy.yaml")))) == 1
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    manifest["training"]["loads"] = [{"trace": "history.csv"}]  # as `train --trace` records it
    (copy_dir / "manifest.json").write_text(json.dumps(manifest))
    assert advisories(load_config(write(tmp_path, real, "trace.yaml"))) == []
    for quiet in ("newsvendor", "default"):
        real["groups"][0]["policy"] = quiet
        assert advisories(load_config(write(tmp_path, real, f"{quiet}.yaml"))) == [], quiet
    ok = run_cli("config", "check", str(REPO / "examples" / "ec2-cloudwatch.yaml"))
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    cw = yaml.safe_load((REPO / "examples" / "ec2-cloudwatch.yaml").read_text())
    cw["groups"][0]["policy"] = "synthetic"
    del cw["groups"][0]["policy_params"]  # the example's prices are the rule's
    noted = run_cli("config", "check", str(write(tmp_path, cw, "cw.yaml")))
    assert noted.returncode == 0 and noted.stdout.startswith("OK ")
    assert noted.stderr.startswith("note: group web: policy synthetic") and len(noted.stderr.splitlines()) == 1
