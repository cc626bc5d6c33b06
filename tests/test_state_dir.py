"""Where the journal lives: the config's journal_path, else STATE_DIRECTORY (systemd, the container), else
XDG_STATE_HOME/fleetpilot, else ~/.local/state/fleetpilot; never inside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleetpilot.controller.config import ConfigError, load_config
from fleetpilot.controller.state import StateDirError, default_journal_path, state_dir

REPO = Path(__file__).resolve().parents[1]
FLEETPILOT = str(Path(sys.executable).parent / "fleetpilot")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HOME": "/home/u"}, "/home/u/.local/state/fleetpilot/journal.sqlite"),
        ({"HOME": "/home/u", "XDG_STATE_HOME": "/xdg"}, "/xdg/fleetpilot/journal.sqlite"),
        # the XDG spec: a relative XDG_STATE_HOME is invalid and ignored
        ({"HOME": "/home/u", "XDG_STATE_HOME": "rel/state"}, "/home/u/.local/state/fleetpilot/journal.sqlite"),
        ({"HOME": "/home/u", "XDG_STATE_HOME": "  "}, "/home/u/.local/state/fleetpilot/journal.sqlite"),
        # systemd's StateDirectory= wins over XDG
        (
            {"HOME": "/home/u", "XDG_STATE_HOME": "/xdg", "STATE_DIRECTORY": "/var/lib/fleetpilot"},
            "/var/lib/fleetpilot/journal.sqlite",
        ),
        # several StateDirectory= entries: the first
        ({"STATE_DIRECTORY": "/var/lib/fleetpilot:/var/lib/other"}, "/var/lib/fleetpilot/journal.sqlite"),
        # a relative STATE_DIRECTORY is not systemd's: ignored
        ({"HOME": "/home/u", "STATE_DIRECTORY": "state"}, "/home/u/.local/state/fleetpilot/journal.sqlite"),
    ],
)
def test_resolution_order(env, expected):
    assert default_journal_path(env) == Path(expected)


def test_no_home_falls_back_to_the_password_database():
    import pwd

    home = pwd.getpwuid(os.getuid()).pw_dir
    assert state_dir({}) == Path(home) / ".local" / "state" / "fleetpilot"


def test_nowhere_to_put_state_is_one_clear_error(monkeypatch):
    import pwd

    def no_entry(uid):
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(StateDirError, match="set journal_path in the config, or STATE_DIRECTORY or XDG_STATE_HOME"):
        state_dir({})


def _config(tmp_path: Path, **over) -> Path:
    d = {
        "groups": [
            {
                "name": "web",
                "policy": "target-tracking",
                "source": {"kind": "simulator", "seed": 1},
                "backend": {"kind": "simulated", "seed": 1},
            }
        ],
        **over,
    }
    p = tmp_path / "cfg" / "fleetpilot.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(yaml.safe_dump(d), encoding="utf-8")
    return p


def test_config_journal_path_wins_and_is_relative_to_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    assert load_config(_config(tmp_path, journal_path="j.sqlite")).journal_path == tmp_path / "cfg" / "j.sqlite"
    monkeypatch.setenv("FLEETPILOT_JOURNAL_PATH", str(tmp_path / "env.sqlite"))
    assert load_config(_config(tmp_path, journal_path="j.sqlite")).journal_path == tmp_path / "env.sqlite"


def test_config_without_journal_path_uses_the_state_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cfg = _config(tmp_path)
    assert load_config(cfg).journal_path == tmp_path / "xdg" / "fleetpilot" / "journal.sqlite"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    assert load_config(cfg).journal_path == tmp_path / "systemd" / "journal.sqlite"


def test_config_without_journal_path_and_no_state_dir_is_refused_in_one_line(tmp_path, monkeypatch):
    import pwd

    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    cfg = _config(tmp_path)
    with pytest.raises(ConfigError, match=r"fleetpilot.yaml: journal_path: no state directory"):
        load_config(cfg)


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([FLEETPILOT, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPILOT_") and k != "STATE_DIRECTORY"}
    env.pop("XDG_STATE_HOME", None)
    env.update(HOME=str(tmp_path / "home"), **extra)
    return env


def test_run_then_decisions_find_the_journal_without_being_told(tmp_path):
    """The demo's shape: no journal_path. `run` writes to ~/.local/state/fleetpilot, nothing next to the config;
    `decisions --config` and plain `decisions` read the same journal."""
    env = _env(tmp_path)
    cfg = _config(tmp_path)
    run = _cli("run", "--config", str(cfg), "--once", "--quiet", env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    journal = tmp_path / "home" / ".local" / "state" / "fleetpilot" / "journal.sqlite"
    assert journal.is_file()
    assert not list(cfg.parent.glob("*.sqlite*")) and not list(tmp_path.glob("*.sqlite*"))
    by_config = _cli("decisions", "--config", str(cfg), "--json", env=env, cwd=tmp_path)
    plain = _cli("decisions", "--json", env=env, cwd=tmp_path)
    assert by_config.returncode == 0 and plain.returncode == 0, by_config.stderr + plain.stderr
    assert by_config.stdout == plain.stdout and '"group_name":"web"' in plain.stdout


def test_systemd_state_directory_is_used(tmp_path):
    env = _env(tmp_path, STATE_DIRECTORY=str(tmp_path / "var-lib-fleetpilot"))
    run = _cli("run", "--config", str(_config(tmp_path)), "--once", "--quiet", env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "var-lib-fleetpilot" / "journal.sqlite").is_file()
    assert not (tmp_path / "home" / ".local").exists()
    plain = _cli("decisions", "--last", "1", env=env, cwd=tmp_path)
    assert plain.returncode == 0 and "web" in plain.stdout


def test_decisions_without_a_journal_says_where_it_looked(tmp_path):
    env = _env(tmp_path, XDG_STATE_HOME=str(tmp_path / "xdg"))
    r = _cli("decisions", env=env, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert str(tmp_path / "xdg" / "fleetpilot" / "journal.sqlite") in r.stderr and "no journal" in r.stderr
    assert "--config or --journal" in r.stderr


def test_the_demo_config_keeps_its_journal_out_of_the_checkout():
    demo = yaml.safe_load((REPO / "examples" / "simulator.yaml").read_text(encoding="utf-8"))
    assert "journal_path" not in demo
    assert "examples/simulator.yaml" in (REPO / "scripts" / "demo.sh").read_text(encoding="utf-8")
    for path in (REPO / "examples").glob("*.yaml"):
        jp = yaml.safe_load(path.read_text(encoding="utf-8")).get("journal_path")
        assert jp is None or Path(jp).is_absolute(), f"{path.name}: a relative journal_path lands in the checkout"


def test_deployments_put_the_journal_in_var_lib():
    unit = (REPO / "deploy" / "systemd" / "fleetpilot.service").read_text(encoding="utf-8")
    assert "\nStateDirectory=fleetpilot\n" in unit
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "STATE_DIRECTORY=/var/lib/fleetpilot" in dockerfile
    values = yaml.safe_load((REPO / "helm" / "fleetpilot" / "values.yaml").read_text(encoding="utf-8"))
    assert values["config"]["journal_path"].startswith("/var/lib/fleetpilot/")
