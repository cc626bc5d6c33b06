"""Hardening (issue 15): what an adversarial or careless operator broke, each pinned by a test that failed first.

1. absurd finite loads: capacity arithmetic saturates, an implausible reading is bad data, no scale-in;
   the config is bounded to what the backend and the journal can store;
2. the journal: rows of a write that happened are never lost; one writer per journal;
3. credentials never reach a log (URL userinfo, query tokens, echoed Authorization headers);
4. the model manifest is validated before anything else;
5. `config check` and `run` refuse the same journal and model paths with the same line;
6. inputs that hang or flood (FIFOs, /dev/zero, huge fields; idle sockets on the metrics server);
7. duplicate YAML keys are refused; a trace with a UTF-8 byte-order mark is accepted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from fleetpilot.controller import guards
from fleetpilot.controller.backends.simulated import SimulatedBackend
from fleetpilot.controller.config import ConfigError, load_config
from fleetpilot.controller.daemon import Daemon
from fleetpilot.controller.journal import read_decisions
from fleetpilot.policies.actions import ActionMapping
from fleetpilot.policies.observation import ObservationBuilder
from fleetpilot.policies.registry import make_policy

FLEETPILOT = str(Path(sys.executable).parent / "fleetpilot")
INT64_MIN = int(np.iinfo(np.int64).min)


def cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([FLEETPILOT, *args], capture_output=True, text=True, timeout=timeout, **kw)


def one_line_exit_2(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def sim_config(tmp_path: Path, **group) -> dict:
    g = {
        "name": "web",
        "policy": "target-tracking",
        "min_machines": 1,
        "max_machines": 100,
        "source": {"kind": "simulator", "seed": 0},
        "backend": {"kind": "simulated", "seed": 0, "initial_machines": 30},
    }
    g.update(group)
    return {"interval_seconds": 0.05, "journal_path": "j.sqlite", "server": {"port": 0}, "groups": [g]}


def write_yaml(tmp_path: Path, data: dict, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


# --- 1. absurd finite loads ---------------------------------------------------------------------------------
def _obs(load: float, n_active: int = 30):
    b = ObservationBuilder(1, np.array([300.0]), 5)
    for m in range(10):
        b.update(np.array([load]), np.array([n_active]), np.array([0]), np.array([1000 + m]))
    return b.observation()


@pytest.mark.parametrize("load", [2.5e21, 1e22, 1e300, 1.7e308])
@pytest.mark.parametrize("spec", ["target-tracking", "step", "predictive", "cushion"])
def test_rule_capacity_arithmetic_saturates_instead_of_wrapping(spec, load):
    pol = make_policy(spec)
    pol.reset(1)
    out = pol.decide(_obs(load))
    assert out.desired.dtype == np.int64 and int(out.desired[0]) >= 30, out.desired


def test_action_mapping_saturates_instead_of_wrapping():
    m = ActionMapping()
    obs = _obs(1e22)
    for k in range(m.n):
        assert int(m.desired(np.array([k]), obs)[0]) >= 30


@pytest.mark.parametrize(
    "spec, params",
    [
        ("step", {"scale_out_steps": [[0.5, 1e300]]}),
        ("target-tracking", {"target_utilization": 1e-300}),
        ("cushion", {"utilization": 1e-300}),
        ("static", {"machines": 10**20}),
    ],
)
def test_rule_parameters_that_overflow_capacity_are_refused(spec, params):
    from fleetpilot.policies.registry import PolicyError

    with pytest.raises(PolicyError):
        make_policy(spec, params)


@pytest.mark.parametrize("policy_desired, fallback_desired", [(INT64_MIN, None), (None, INT64_MIN), (-1, -5)])
def test_no_guard_turns_an_impossible_action_into_a_scale_in(policy_desired, fallback_desired):
    limits = guards.Limits(min_machines=2, max_machines=100, max_scale_out_per_tick=10, max_scale_in_per_tick=10)
    now = guards.GroupNow(active=30, warming=0, desired=30)
    prop = guards.Proposal(policy_desired, fallback_desired, guards.DATA_OK, None if policy_desired else "non_finite")
    d, _ = guards.decide(guards.Memory(), now, prop, limits, 100)
    assert d.final == 30 and d.action == "hold" and not d.write, d


def _spike_trace(tmp_path: Path) -> Path:
    lines = ["timestamp,requests"]
    for m in range(120):
        v = 1e22 if 40 <= m < 70 else 6000
        lines.append(f"2026-01-05T{m // 60:02d}:{m % 60:02d}:00Z,{v:g}")
    p = tmp_path / "spike.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("policy", ["target-tracking", "default"])
def test_an_absurd_load_spike_is_bad_data_and_never_scales_in(tmp_path, policy):
    trace = _spike_trace(tmp_path)
    data = sim_config(tmp_path, policy=policy, source={"kind": "csv", "path": str(trace)})
    cfg = load_config(write_yaml(tmp_path, data))
    d = Daemon(cfg, CollectorRegistry())
    d.backfill()
    for _ in range(100):
        d.run_tick()
    d.close()
    rows = read_decisions(tmp_path / "j.sqlite", "web", 1000)
    spike = [r for r in rows if r["load_minute"] is not None and 40 <= r["load_minute"] - rows[0]["load_minute"] < 70]
    assert len(spike) == 30
    for r in spike:
        assert r["data_status"] == "implausible", r
        assert r["final"] >= r["desired_before"], r
        assert not any(x in ("min-machines", "scale-in-limit") for x in r["guards"]), r
    assert d.registry.get_sample_value(
        "fleetpilot_source_errors_total", {"group": "web", "kind": "implausible"}
    ) == pytest.approx(30)


def test_a_configured_load_ceiling_flags_readings_above_it(tmp_path):
    data = sim_config(tmp_path, max_load_tpm=5000.0, source={"kind": "csv", "path": str(_spike_trace(tmp_path))})
    cfg = load_config(write_yaml(tmp_path, data))
    assert cfg.groups[0].max_load_tpm == 5000.0
    d = Daemon(cfg, CollectorRegistry())
    d.backfill()
    d.run_tick()
    d.close()
    assert read_decisions(tmp_path / "j.sqlite", "web", 1)[0]["data_status"] == "implausible"  # 6,000 > 5,000


@pytest.mark.parametrize(
    "field, value",
    [
        ("min_machines", 10**20),
        ("max_machines", 10**20),
        ("max_scale_out_per_tick", 10**20),
        ("max_scale_in_per_tick", 10**20),
        ("capacity_tpm_per_machine", 1e300),
    ],
)
def test_config_is_bounded_to_what_the_backend_and_journal_can_store(tmp_path, field, value):
    group = {field: value}
    if field == "min_machines":
        group["max_machines"] = value
    p = write_yaml(tmp_path, sim_config(tmp_path, **group))
    with pytest.raises(ConfigError, match=rf"groups\[0\]\.{field}: "):
        load_config(p)


def test_min_max_1e20_is_refused_by_config_check_and_run(tmp_path):
    p = write_yaml(tmp_path, sim_config(tmp_path, min_machines=10**20, max_machines=10**20))
    a = one_line_exit_2(cli("config", "check", str(p)), "groups[0].min_machines")
    b = one_line_exit_2(cli("run", "--config", str(p), "--once", "--quiet"), "groups[0].min_machines")
    assert a.split("error: ", 1)[1] == b.split("error: ", 1)[1]
