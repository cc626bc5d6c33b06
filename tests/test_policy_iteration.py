"""Rollout policy iteration (`training.policy_iteration`, `method: rollout-pi`): the measured advantages, the
fit, and a smoke training through the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fleetpilot.policies.actions import ActionMapping
from fleetpilot.policies.cushion import RuleActions
from fleetpilot.sim.fleet import expected_reward
from fleetpilot.sim.load import synthetic_load
from fleetpilot.sim.params import FleetParams
from fleetpilot.training.backtest import simulate
from fleetpilot.training.policy_iteration import Segments, fit_actor, segment_rollouts
from fleetpilot.training.ppo import Agent

FLEETPILOT = [sys.executable, "-m", "fleetpilot.controller.cli"]
MAPPING = ActionMapping((0.5, 0.8), (0.0, 0.2), 3, 1.1, (0.25, 1.0, 4.0))


def _loads(n: int, minutes: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    loads = np.stack([synthetic_load(rng, minutes + 1) for _ in range(n)])
    return loads, np.full(n, 28_000_000), np.arange(1, n + 1, dtype=np.uint64)


def test_an_action_the_policy_takes_anyway_has_no_advantage_and_others_do():
    loads, starts, keys = _loads(3, 400)
    base = MAPPING.n_grid + 1  # newsvendor, risk 1
    seg = segment_rollouts(lambda x: np.full(len(x), base), MAPPING, loads, starts, keys, FleetParams(), 10, 40, 120)
    assert seg.features.shape == (3 * 7, 33)  # periods starting at 120, 160, ..., 360
    assert seg.advantage.shape == (3 * 7, MAPPING.n)
    assert np.all(seg.advantage[:, base] == 0.0)  # holding the policy's own action changes nothing
    assert np.abs(seg.advantage).max(axis=0)[np.arange(MAPPING.n) != base].min() > 0
    assert seg.source is not None and not seg.source.any()  # one source unless told


def test_each_round_knows_which_source_each_load_was_drawn_from():
    from fleetpilot.training.env import MixtureSampler
    from fleetpilot.training.ppo import _draw_loads

    fleet = FleetParams()
    sampler = MixtureSampler({"generator": 0.5, "seed": 0.5}, max_load_tpm=fleet.max_load_tpm)
    sources: list[str] = []
    loads, starts = _draw_loads(fleet, sampler, 3, 8, 300, sources)
    assert len(sources) == 8 and set(sources) == {"generator", "seed"}
    seg = segment_rollouts(
        lambda x: np.full(len(x), 1), MAPPING, loads, starts, np.arange(8, dtype=np.uint64), fleet, 10, 40, 120,
        np.array(sources),
    )  # fmt: skip
    assert [seg.source[seg.load == i][0] for i in range(8)] == sources


def test_an_advantage_is_the_reward_of_holding_the_action_minus_the_policy_in_that_period():
    """Replayed independently with `simulate`: the fleet that holds action 0 for the first 10 minutes of each
    40 and runs action 5 otherwise, against the fleet that always runs action 5; two loads, so rows of one load
    and periods of the other cannot be mixed up."""
    loads, starts, keys = _loads(2, 400, seed=11)
    fleet = FleetParams()
    seg = segment_rollouts(lambda x: np.full(len(x), 5), MAPPING, loads, starts, keys, fleet, 10, 40, 120)

    class Hold(RuleActions):
        t = 0

        def decide(self, obs):
            self.t += 1
            self.main = np.array(0 if (self.t - 1) % 40 < 10 else 5)
            return super().decide(obs)

    held = simulate(Hold(MAPPING, np.array(0)), loads, starts, keys, fleet)
    own = simulate(RuleActions(MAPPING, np.array(5)), loads, starts, keys, fleet)
    periods = [(s, s + 40) for s in range(120, 400 - 39, 40)]
    revenue = fleet.revenue_usd_per_1k_transactions / 1000
    for i in range(2):
        r_held = expected_reward(held.active, loads[:, 1:], fleet)[i]
        r_own = expected_reward(own.active, loads[:, 1:], fleet)[i]
        served = np.array([loads[i, a + 1 : b + 1].sum() * revenue for a, b in periods])
        expect = np.array([(r_held[a:b] - r_own[a:b]).sum() for a, b in periods]) / served.mean()
        rows = seg.load == i
        assert rows.sum() == len(periods)
        np.testing.assert_allclose(seg.advantage[rows, 0], expect, rtol=1e-9, atol=1e-12)
    assert not np.allclose(seg.advantage[seg.load == 0, 0], seg.advantage[seg.load == 1, 0])


def test_the_fit_learns_a_choice_that_depends_on_the_state():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 33)).astype(np.float32)
    adv = np.zeros((4000, MAPPING.n))
    adv[x[:, 0] > 0, 1] = 0.5  # action 1 earns half a period's revenue more when feature 0 is positive
    adv[x[:, 0] <= 0, 6] = 0.2  # action 6 earns more otherwise
    gen = torch.Generator().manual_seed(1)
    agent = Agent(MAPPING.n, 32, generator=gen)
    before = adv.max(axis=1).mean()  # regret of a policy that never picks the better one (about 0.35)
    fit = fit_actor(agent.actor, Segments(x, adv, np.arange(4000) // 50), epochs=30, lr=3e-3, gen=gen)
    assert before > 0.3
    assert fit.epoch > 0 and fit.holdout_regret_before > 0.3
    assert fit.regret < 0.05 * before and fit.holdout_regret < 0.05 * before


def _two_sources(transfer: bool) -> Segments:
    """Two sources of 2,000 periods each, action 5 the policy's own. Where feature 0 is positive, action 1
    earns half a period's revenue more in source 0; in source 1 it does too (`transfer`), or action 6 does
    and each source's favourite costs a period's revenue in the other. Feature 1 tells the sources apart."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4000, 33)).astype(np.float32)
    src = np.repeat([0, 1], 2000)
    x[:, 1] = 2.0 * src - 1.0
    up = x[:, 0] > 0
    adv = np.zeros((4000, MAPPING.n))
    adv[up & (src == 0), 1] = 0.5
    if transfer:
        adv[up & (src == 1), 1] = 0.5
    else:
        adv[up & (src == 1), 6] = 0.5
        adv[up & (src == 0), 6] = -1.0
        adv[up & (src == 1), 1] = -1.0
    return Segments(x, adv, np.arange(4000) // 50, src)


def _starting_actor(gen: torch.Generator) -> torch.nn.Module:
    actor = Agent(MAPPING.n, 32, generator=gen).actor
    with torch.no_grad():
        actor[-1].bias[5] = 3.0  # starts as the policy that takes action 5 everywhere
    return actor


def test_a_fit_judged_by_sources_keeps_what_holds_on_a_source_it_did_not_see():
    gen = torch.Generator().manual_seed(1)
    seg = _two_sources(transfer=True)
    actor = _starting_actor(gen)
    fit = fit_actor(actor, seg, epochs=30, lr=3e-3, gen=gen, holdout="sources")
    assert fit.holdout_regret_before > 0.2  # half the periods miss 0.5
    assert fit.epoch > 0 and fit.holdout == "sources" and fit.source_change_pass == fit.epoch
    assert fit.source_change is not None and all(v < 0 for v in fit.source_change.values())  # both improved
    assert fit.holdout_regret < 0.6 * fit.holdout_regret_before  # learned from one source, better on the other
    assert fit.regret < 0.05  # then fit on both


def test_a_fit_judged_by_sources_changes_nothing_when_each_source_contradicts_the_other():
    """What is learned from either source alone makes the other worse: the starting actor is kept, even though
    a fit on both (holdout "loads") can tell them apart and learns something."""
    gen = torch.Generator().manual_seed(1)
    seg = _two_sources(transfer=False)
    actor = _starting_actor(gen)
    start = {k: v.clone() for k, v in actor.state_dict().items()}
    fit = fit_actor(actor, seg, epochs=30, lr=3e-3, gen=gen, holdout="sources")
    assert fit.epoch == 0 and all(torch.equal(v, start[k]) for k, v in actor.state_dict().items())
    # what stopped it: after the last pass, a source the fit did not see was worse
    assert fit.source_change is not None and fit.source_change_pass > 0 and max(fit.source_change.values()) > 0
    by_loads = fit_actor(_starting_actor(gen), seg, epochs=30, lr=3e-3, gen=gen, holdout="loads")
    assert by_loads.epoch > 0 and by_loads.holdout_regret < by_loads.holdout_regret_before
    assert by_loads.holdout == "loads" and by_loads.source_change is None


def test_an_unknown_holdout_or_a_miscounted_source_list_is_refused():
    gen = torch.Generator().manual_seed(1)
    with pytest.raises(ValueError, match="holdout 'traces'"):
        fit_actor(_starting_actor(gen), _two_sources(transfer=True), epochs=1, lr=1e-3, gen=gen, holdout="traces")
    loads, starts, keys = _loads(2, 200)
    with pytest.raises(ValueError, match="sources: 3 given for 2 loads"):
        segment_rollouts(
            lambda x: np.full(len(x), 1), MAPPING, loads, starts, keys, FleetParams(), 10, 40, 120,
            np.array(["a", "b", "c"]),
        )  # fmt: skip


def test_a_checkpoint_written_before_a_setting_existed_resumes_with_its_default(tmp_path: Path):
    from dataclasses import asdict

    from fleetpilot.policies.rise_tail import TAIL_VERSION
    from fleetpilot.training.ppo import Checkpoint, CheckpointError, PPOConfig, resume_run

    gen = torch.Generator().manual_seed(1)
    agent = Agent(MAPPING.n, 8, generator=gen)
    opt = torch.optim.Adam(agent.parameters())
    old = asdict(PPOConfig(mapping=MAPPING.to_json(), hidden=8))
    del old["pi_holdout"]  # a checkpoint of a version without the setting
    path = tmp_path / "checkpoint.pt"
    Checkpoint(agent.state_dict(), opt.state_dict(), 3, 99, old, gen.get_state(), newsvendor_tail=TAIL_VERSION).save(
        path
    )
    run = resume_run(path, PPOConfig(mapping=MAPPING.to_json(), hidden=8), agent, opt, gen)
    assert (run.update, run.global_step) == (3, 99)
    with pytest.raises(CheckpointError, match="another configuration"):
        resume_run(path, PPOConfig(mapping=MAPPING.to_json(), hidden=8, pi_holdout="sources"), agent, opt, gen)
    for config in ({**old, "init_bias": 0.5}, [old]):  # a setting this version does not know; not a config
        state = (agent.state_dict(), opt.state_dict(), 3, 99, config, gen.get_state())
        Checkpoint(*state, newsvendor_tail=TAIL_VERSION).save(path)  # type: ignore[arg-type]
        with pytest.raises(CheckpointError, match="another configuration"):
            resume_run(path, PPOConfig(mapping=MAPPING.to_json(), hidden=8), agent, opt, gen)


def test_a_checkpoint_of_another_rise_tail_is_refused_and_a_grid_only_one_resumes(tmp_path: Path):
    """A checkpoint's actor learned what its newsvendor actions did under the rise tail of its day: resuming it
    under another (or one it did not record, an older one) would export a policy trained partly on another
    meaning of its actions, stamped with this version. A mapping without newsvendor actions prices no tail."""
    from dataclasses import asdict

    from fleetpilot.policies.rise_tail import TAIL_VERSION
    from fleetpilot.training.ppo import Checkpoint, CheckpointError, PPOConfig, resume_run

    gen = torch.Generator().manual_seed(1)
    agent = Agent(MAPPING.n, 8, generator=gen)
    opt = torch.optim.Adam(agent.parameters())
    cfg = PPOConfig(mapping=MAPPING.to_json(), hidden=8)
    path = tmp_path / "checkpoint.pt"
    for tail in (0, 1, TAIL_VERSION + 1):
        Checkpoint(
            agent.state_dict(), opt.state_dict(), 3, 99, asdict(cfg), gen.get_state(), newsvendor_tail=tail
        ).save(path)
        with pytest.raises(CheckpointError) as err:
            resume_run(path, cfg, agent, opt, gen)
        msg = str(err.value)
        assert msg.startswith(f"{path} records ") and "\n" not in msg and "--no-resume" in msg
        assert (f"rise tail v{tail};" if tail else "no rise tail version") in msg and f"tail is v{TAIL_VERSION}" in msg
    # what this version writes resumes; Checkpoint.load of a file without the field reads 0 (unknown)
    Checkpoint(
        agent.state_dict(), opt.state_dict(), 3, 99, asdict(cfg), gen.get_state(), newsvendor_tail=TAIL_VERSION
    ).save(path)
    assert resume_run(path, cfg, agent, opt, gen).update == 3
    state = torch.load(path, weights_only=True)
    del state["newsvendor_tail"]
    torch.save(state, path)
    assert Checkpoint.load(path).newsvendor_tail == 0
    grid = ActionMapping((0.5, 0.8), (0.0, 0.2), 3, 1.1)
    g_agent = Agent(grid.n, 8, generator=gen)
    g_opt = torch.optim.Adam(g_agent.parameters())
    g_cfg = PPOConfig(mapping=grid.to_json(), hidden=8)
    Checkpoint(g_agent.state_dict(), g_opt.state_dict(), 2, 9, asdict(g_cfg), gen.get_state()).save(path)
    assert resume_run(path, g_cfg, g_agent, g_opt, gen).update == 2


def test_a_trace_sampler_records_which_trace_it_drew_without_changing_the_draw():
    from fleetpilot.sim.load import Load, sample_window
    from fleetpilot.training.env import LoadSampler

    rng = np.random.default_rng(9)
    traces = [Load(name, synthetic_load(rng, 3000)) for name in ("a", "b")]
    sampler = LoadSampler(traces)
    draw, twin = np.random.default_rng(1), np.random.default_rng(1)
    seen = set()
    for _ in range(8):
        load, start = sampler.sample(draw, 500)
        trace = traces[int(twin.integers(2))]  # what the sampler did before it recorded anything
        window = sample_window(twin, trace, 500, None)
        assert sampler.last == {"component": trace.name}
        np.testing.assert_array_equal(load, np.minimum(window.load_tpm, sampler.max_load_tpm))
        assert start == window.start_minute()
        seen.add(trace.name)
    assert seen == {"a", "b"}


def test_rollout_pi_training_runs_validates_and_records_its_method(tmp_path: Path):
    cfg = tmp_path / "pi.yaml"
    cfg.write_text(
        "method: rollout-pi\nepisode_minutes: 400\neval_seeds: [500]\neval_minutes: 300\ninit_loads: 2\n"
        "init_action: risk=1\ninit_jump_window_minutes: 0\npi_iterations: 2\npi_loads: 3\npi_hold_minutes: 10\n"
        "pi_period_minutes: 40\npi_skip_minutes: 120\npi_epochs: 5\n"
        "mapping: {kind: utilization-cushion-grid, utilization: [0.5, 0.8], cushion_day_max_share: [0.0, 0.2],\n"
        "          base_minutes: 3, surge_ratio: 1.1, newsvendor_risk: [0.25, 1.0, 4.0]}\n"
    )
    runs = []
    for name in ("m", "again"):
        out = tmp_path / name
        r = subprocess.run(
            FLEETPILOT + ["train", "--config", str(cfg), "--seed", "2", "--test-seeds", "3000", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append((out / "policy.onnx").read_bytes())
    assert runs[0] == runs[1]  # deterministic for a seed
    out = tmp_path / "m"
    assert "starting from the rule newsvendor risk=1" in r.stderr
    assert "newsvendor" in r.stdout  # the starting rule is in the report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["ppo"]["method"] == "rollout-pi"
    assert manifest["training"]["selected_update"] in (0, 1, 2)
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["update"] for row in rows] == [1, 2]
    assert all(row["periods"] == 3 * 7 and "val_pct_of_oracle" in row for row in rows)


def test_zero_rounds_export_the_imitated_rule_on_its_rise_scale(tmp_path: Path):
    """`pi_iterations: 0` (the shipped default's recipe): no round, the imitated starting rule is exported, and
    its newsvendor actions price the mapping's rise scale; a negative count is still refused with one line."""
    from fleetpilot.policies.newsvendor import NewsvendorParams, NewsvendorPolicy
    from fleetpilot.policies.onnx_policy import OnnxPolicy
    from fleetpilot.training.backtest import backtest, synthetic_run

    cfg = tmp_path / "pi.yaml"
    text = (
        "method: rollout-pi\nepisode_minutes: 400\neval_seeds: [500]\neval_minutes: 300\ninit_loads: 2\n"
        "init_action: risk=1\ninit_jump_window_minutes: 0\npi_iterations: 0\npi_skip_minutes: 120\npi_period_minutes: 40\n"
        "mapping: {kind: utilization-cushion-grid, utilization: [0.45], cushion_day_max_share: [0.3],\n"
        "          base_minutes: 3, surge_ratio: 1.1, newsvendor_risk: [0.25, 1.0, 4.0],\n"
        "          newsvendor_rise_scale: mixture}\n"
    )
    cfg.write_text(text)
    out = tmp_path / "m"
    r = subprocess.run(
        FLEETPILOT + ["train", "--config", str(cfg), "--seed", "2", "--test-seeds", "3000", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["selected_update"] == 0
    assert manifest["action_mapping"]["newsvendor_rise_scale"] == "mixture"
    runs = [synthetic_run(3000, 1500)]
    report = backtest(
        runs, {"model": OnnxPolicy.load(out), "rule": NewsvendorPolicy(NewsvendorParams(rise_scale="mixture"))}
    )
    model, rule = report.summary
    assert model["expected_profit_usd"] == rule["expected_profit_usd"], (model, rule)
    cfg.write_text(text.replace("pi_iterations: 0", "pi_iterations: -1"))
    r = subprocess.run(
        FLEETPILOT + ["train", "--config", str(cfg), "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "pi_iterations: -1 is not a whole number >= 0" in r.stderr and "Traceback" not in r.stderr


def test_rollout_pi_on_a_mixture_judges_each_round_by_sources(tmp_path: Path):
    """`pi_holdout: sources` through the CLI on a mixture of one trace and the generator: each round's log row
    says what its fit was judged on and, per source, what a fit without it did to it."""
    from fleetpilot.sim.load import Load, write_trace

    trace = tmp_path / "history.csv"
    write_trace(trace, Load("history", synthetic_load(np.random.default_rng(4), 3001)))
    cfg = tmp_path / "pi.yaml"
    cfg.write_text(
        "method: rollout-pi\nepisode_minutes: 300\neval_minutes: 200\ninit_loads: 2\ninit_action: risk=1\n"
        "init_jump_window_minutes: 0\nimitation_smoothing: 0.5\npi_iterations: 2\npi_loads: 6\n"
        "pi_hold_minutes: 10\npi_period_minutes: 40\npi_skip_minutes: 120\npi_epochs: 5\npi_holdout: sources\n"
        "mapping: {kind: utilization-cushion-grid, utilization: [0.45], cushion_day_max_share: [0.3],\n"
        "          base_minutes: 3, surge_ratio: 1.1, newsvendor_risk: [0.25, 1.0, 4.0]}\n"
    )
    out = tmp_path / "m"
    r = subprocess.run(
        FLEETPILOT + ["train", "--config", str(cfg), "--trace", str(trace), "--loads", "broad",
                      "--mixture", "generator=0.5,traces=0.5", "--seed", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["update"] for row in rows] == [1, 2]
    judged = [row for row in rows if row["fit_holdout"] == "sources"]
    assert judged, rows  # six loads from two sources: a round that drew both is judged by sources
    for row in judged:
        assert set(row["fit_source_change"]) == {"generator", "history"}
        assert row["fit_source_change_pass"] == (row["fit_epoch"] or 5)  # the kept pass, else the last


def test_bad_rollout_pi_settings_are_one_line_naming_the_field(tmp_path: Path):
    for text, field in (
        ("method: sarsa\n", "method"),
        ("init_action: risk=3\n", "init_action"),
        ("method: rollout-pi\npi_hold_minutes: 90\npi_period_minutes: 60\n", "pi_hold_minutes"),
        ("method: rollout-pi\npi_loads: 0\n", "pi_loads"),
        ("imitation_smoothing: 1.5\n", "imitation_smoothing"),
        ("imitation_smoothing: lots\n", "imitation_smoothing"),
        ("init_action: risk=abc\n", "init_action"),
        ("init_action: 1\n", "init_action"),
        ("method: rollout-pi\npi_loads: true\n", "pi_loads"),
        ("method: rollout-pi\npi_holdout: traces\n", "pi_holdout"),
        ("mapping: {kind: utilization-cushion-grid}\n", "mapping"),
        ("method: rollout-pi\nepisode_minutes: 1501\npi_skip_minutes: 1441\n", "pi_skip_minutes"),
        ("actor_features: [load, periodcity]\n", "actor_features: 'periodcity' not an observation feature"),
        ("actor_features: periodicity\n", "actor_features: 'periodicity' is not a list of feature names"),
        ("actor_features: [load, lag1, load]\n", "actor_features: 'load' named twice"),
    ):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(text)
        r = subprocess.run(
            FLEETPILOT + ["train", "--config", str(cfg), "--out", str(tmp_path / "x")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, (text, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert str(cfg) in r.stderr and field in r.stderr, r.stderr
        assert not (tmp_path / "x").exists()  # refused before anything is written
    cfg.write_text("method: rollout-pi\n")  # --steps would be ignored: rollout-pi counts rounds, not steps
    r = subprocess.run(
        FLEETPILOT + ["train", "--config", str(cfg), "--steps", "4096", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--steps" in r.stderr and "pi_iterations" in r.stderr and str(cfg) in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_own_history_benchmark_trains_on_the_first_two_thirds_and_scores_the_last(tmp_path: Path):
    """benchmarks/own_history.py, tiny: a 6,000-minute synthetic history, two rounds on a few loads."""
    from fleetpilot.sim.load import Load, write_trace

    rng = np.random.default_rng(3)
    trace = tmp_path / "history.csv"
    write_trace(trace, Load("history", synthetic_load(rng, 6001)))
    cfg = tmp_path / "pi.yaml"
    cfg.write_text(
        "method: rollout-pi\nepisode_minutes: 600\ninit_loads: 2\ninit_action: risk=1\ninit_jump_window_minutes: 0\n"
        "imitation_smoothing: 0.5\npi_iterations: 2\npi_loads: 3\npi_hold_minutes: 10\npi_period_minutes: 40\n"
        "pi_skip_minutes: 200\npi_epochs: 5\n"
        "mapping: {kind: utilization-cushion-grid, utilization: [0.45], cushion_day_max_share: [0.3],\n"
        "          base_minutes: 3, surge_ratio: 1.1, newsvendor_risk: [0.25, 1.0, 4.0]}\n"
    )
    out = tmp_path / "own.json"
    r = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "own_history.py"),
         "--trace", str(trace), "--config", str(cfg), "--small-grid", "--out", str(tmp_path / "m"), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    fig = json.loads(out.read_text())
    assert all(isinstance(v, int | float | str | bool) for v in fig.values())  # flat
    assert fig["test_minutes"] == 6001 - int(6001 * 0.67) - 1  # the last third (6,001 minutes), first one observed
    manifest = json.loads((tmp_path / "m" / "model" / "manifest.json").read_text())
    split = manifest["training"]["loads"][0]["data_split"]
    assert split["shares"] == [0.5, 0.17, 0.33]
    for k in ("learned", "newsvendor", "tt_hindsight"):
        assert fig[f"{k}_pct_of_oracle"] <= 100.0 and isinstance(fig[f"{k}_downtime_minutes"], int)
        usd = fig[f"{k}_expected_profit_usd"]
        assert fig[f"{k}_pct_of_oracle"] == pytest.approx(100 * usd / fig["oracle_expected_profit_usd"], abs=0.011)
    # the comparisons are in dollars (a % of an oracle that loses money would flip them)
    assert fig["learned_beats_tt_hindsight"] == (
        fig["learned_expected_profit_usd"] > fig["tt_hindsight_expected_profit_usd"]
    )
    assert fig["selected_update"] in (0, 1, 2) and fig["train_seconds"] >= fig["training_seconds"] > 0


@pytest.mark.parametrize("recipe", ["rollout-pi-broad.yaml", "rollout-pi-sources.yaml"])
def test_the_recorded_rollout_pi_recipes_are_valid_training_configs(recipe: str):
    """docs/experiments/rollout-pi-*.yaml (README; the leave-one-trace-out and own-history runs) load as the
    train command reads them: rollout policy iteration from the newsvendor rule over its risk actions, the
    second judged by sources."""
    import argparse

    from fleetpilot.training.cli import _train_config
    from fleetpilot.training.ppo import action_index

    path = Path(__file__).resolve().parents[1] / "docs" / "experiments" / recipe
    cfg, _ = _train_config(str(path), argparse.Namespace(steps=None, seed=None))
    mapping = ActionMapping.from_json(cfg.mapping)
    assert cfg.method == "rollout-pi" and cfg.init_action == "risk=1"
    assert mapping.describe(action_index(mapping, cfg.init_action)) == "newsvendor risk=1"
    assert cfg.pi_holdout == ("sources" if "sources" in recipe else "loads")


def test_the_recorded_recipe_with_rounds_is_the_shipped_one_with_three_rounds(tmp_path: Path):
    """docs/experiments/default-rounds.yaml (README: the shipped recipe with its rounds on, leave-one-trace-out) is
    docs/experiments/default.yaml, setting for setting, but for its three rounds of policy iteration."""
    import argparse

    from fleetpilot.training.cli import _train_config

    exp = Path(__file__).resolve().parents[1] / "docs" / "experiments"
    rounds, _ = _train_config(str(exp / "default-rounds.yaml"), argparse.Namespace(steps=None, seed=None))
    shipped, _ = _train_config(str(exp / "default.yaml"), argparse.Namespace(steps=None, seed=None))
    assert shipped.pi_iterations == 0 and rounds.pi_iterations == 3
    assert dataclasses.replace(rounds, pi_iterations=0) == shipped
    assert ActionMapping.from_json(rounds.mapping).newsvendor_rise_scale == "mixture"
    # and default-rounds-kind.yaml is that recipe with an actor that reads only the load-kind features
    kind, _ = _train_config(str(exp / "default-rounds-kind.yaml"), argparse.Namespace(steps=None, seed=None))
    assert kind.actor_features and dataclasses.replace(kind, actor_features=[]) == rounds
    # read in the observation's order, whatever order the file names them in
    from fleetpilot.policies.observation import FEATURE_NAMES

    assert kind.actor_features == sorted(kind.actor_features, key=FEATURE_NAMES.index)
    text = (exp / "default-rounds-kind.yaml").read_text()
    assert "[noise, granularity," in text
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text(text.replace("[noise, granularity,", "[granularity, noise,"))
    again, _ = _train_config(str(swapped), argparse.Namespace(steps=None, seed=None))
    assert again == kind


def test_a_trace_too_short_for_a_rollout_period_is_one_line_naming_it(tmp_path: Path):
    """`train --trace` shortens episodes to the training part: a part that leaves no period after the skipped
    history is refused in one line (exit 2), not trained on nothing."""
    from fleetpilot.sim.load import Load, write_trace

    trace = tmp_path / "short.csv"
    write_trace(trace, Load("short", synthetic_load(np.random.default_rng(1), 2501)))  # 1,500 to train on
    cfg = tmp_path / "pi.yaml"
    cfg.write_text("method: rollout-pi\ninit_action: risk=1\ninit_jump_window_minutes: 0\ninit_loads: 1\n"
                   "mapping: {kind: utilization-cushion-grid, utilization: [0.45], cushion_day_max_share: [0.3],\n"
                   "          newsvendor_risk: [1.0]}\n")  # fmt: skip
    r = subprocess.run(
        FLEETPILOT + ["train", "--trace", str(trace), "--config", str(cfg), "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "pi_skip_minutes" in r.stderr


def test_the_budget_stops_before_a_round_that_would_end_past_it(tmp_path: Path, monkeypatch):
    """`--budget-minutes` counts from the start of training, and once a round's work is done the loop goes on
    only if the round's validation and one more round, validated, would end within the budget. On a fake clock
    each round's fit takes 100 s and each validation 20 s (the starting rule's one too): round 1 ends at 140 s,
    round 2 at 260 s. A 260 s budget gets two rounds, a 259 s one only one: checking the next round's work alone
    (120 + 100 <= 259) would have ended round 2 at 260 s, and checking only whether the budget was already
    spent would have run a third round, to 380 s."""
    import fleetpilot.training.policy_iteration as pi
    import fleetpilot.training.ppo as ppo

    now = [1000.0]
    monkeypatch.setattr(ppo, "_clock", lambda: now[0])
    real_fit, real_backtest = pi.fit_actor, ppo.backtest

    def fit_taking_100_s(*args, **kwargs):
        now[0] += 100.0
        return real_fit(*args, **kwargs)

    oracle_seconds = [0.0]

    def validation_taking_20_s(runs, policies, *args, **kwargs):
        if "ppo" in policies:
            now[0] += 20.0
        if "oracle" in policies:
            now[0] += oracle_seconds[0]
        return real_backtest(runs, policies, *args, **kwargs)

    monkeypatch.setattr(pi, "fit_actor", fit_taking_100_s)
    monkeypatch.setattr(ppo, "backtest", validation_taking_20_s)
    cfg = ppo.PPOConfig(
        method="rollout-pi", mapping=MAPPING.to_json(), hidden=8, episode_minutes=400, eval_seeds=[500],
        eval_minutes=300, init_loads=2, init_action="risk=1", init_jump_window_minutes=0, pi_iterations=5,
        pi_loads=3, pi_hold_minutes=10, pi_period_minutes=40, pi_skip_minutes=120, pi_epochs=3,
    )  # fmt: skip
    for budget, rounds, ended in (
        (260.0, [1, 2], 260.0),
        (259.0, [1], 140.0),
        (99.0, [1], 140.0),
        (None, [1, 2, 3, 4, 5], 620.0),
    ):
        now[0] = 1000.0
        out = tmp_path / f"run-{budget}"
        ppo.train(cfg, out, budget_seconds=budget, progress=False)
        rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        # the first round of a run always runs (a checkpoint to resume from), even past a budget already spent
        assert [row["update"] for row in rows] == rounds, budget
        assert now[0] - 1000.0 == ended, budget
        assert all(row["work_seconds"] == 100.0 and row["val_seconds"] == 20.0 for row in rows), rows
    # A resumed run (from the 259 s run's round 1) with 245 s, where the validation oracle (computed once per
    # process) takes 50 s: it is computed first (50 s), round 2 always runs (100 s, validated: 170 s), and a third
    # would end at 290 s. The resumed process has not validated yet, so only the log can tell it what a
    # validation costs, and the oracle must not be left to the first validation: without either, 100 + 20 + 100
    # + 20 <= 245 (or 150 + 0 + 100 + 0) would start round 3 and end past the budget.
    now[0], oracle_seconds[0] = 1000.0, 50.0
    out = tmp_path / "run-259.0"
    ppo.train(cfg, out, budget_seconds=245.0, progress=False)
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["update"] for row in rows] == [1, 2]
    assert now[0] - 1000.0 == 170.0


def test_an_actor_that_reads_some_features_ignores_the_others_through_the_fit_and_the_export(tmp_path: Path):
    """`actor_features`: the other features' first-layer weights start at zero and stay zero through a fit, so
    the exported ONNX network's action does not move when they do; the features it reads still drive it; and
    the rest of the network is drawn as without the setting (the same seed gives the same weights)."""
    import onnxruntime as ort

    from fleetpilot.policies.observation import FEATURE_NAMES
    from fleetpilot.training.export import actor_to_onnx

    reads = ["lag1", "periodicity"]
    cols = [FEATURE_NAMES.index(n) for n in reads]
    agent = Agent(MAPPING.n, 32, generator=torch.Generator().manual_seed(4), reads=reads)
    full = Agent(MAPPING.n, 32, generator=torch.Generator().manual_seed(4))
    assert agent.masked() and not torch.equal(agent.actor[0].weight, full.actor[0].weight)
    assert torch.equal(agent.actor[0].weight[:, cols], full.actor[0].weight[:, cols])
    assert all(
        torch.equal(a, b) for a, b in zip(agent.actor[2:].parameters(), full.actor[2:].parameters(), strict=True)
    )
    assert all(torch.equal(a, b) for a, b in zip(agent.critic.parameters(), full.critic.parameters(), strict=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, len(FEATURE_NAMES))).astype(np.float32)
    adv = np.zeros((4000, MAPPING.n))
    adv[x[:, cols[0]] > 0, 1] = 0.5  # what it reads decides
    adv[x[:, 0] > 0, 6] = 0.8  # and a feature it does not read would decide more
    fit = fit_actor(agent.actor, Segments(x, adv, np.arange(4000) // 50), epochs=30, lr=3e-3, gen=torch.Generator())
    assert fit.epoch > 0 and agent.masked()
    actor_to_onnx(agent, tmp_path / "a.onnx")
    sess = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    act = sess.run(["action"], {"features": x[:500]})[0]
    other = rng.normal(size=(500, len(FEATURE_NAMES))).astype(np.float32)
    other[:, cols] = x[:500, cols]  # every feature it does not read changed
    np.testing.assert_array_equal(sess.run(["action"], {"features": other})[0], act)
    assert set(act[x[:500, cols[0]] > 0.5].tolist()) == {1}  # it learned what it can see
    # a checkpoint of it resumes into a masked agent; one whose actor reads a left-out feature is refused, and
    # such an actor is not exported
    from dataclasses import asdict

    from fleetpilot.policies.rise_tail import TAIL_VERSION
    from fleetpilot.training.export import write_model
    from fleetpilot.training.ppo import Checkpoint, CheckpointError, PPOConfig, resume_run

    cfg = PPOConfig(mapping=MAPPING.to_json(), hidden=32, actor_features=reads)
    opt = torch.optim.Adam(agent.parameters())
    gen = torch.Generator()
    path = tmp_path / "checkpoint.pt"
    Checkpoint(
        agent.state_dict(), opt.state_dict(), 1, 9, asdict(cfg), gen.get_state(), newsvendor_tail=TAIL_VERSION
    ).save(path)
    again = Agent(MAPPING.n, 32, generator=torch.Generator().manual_seed(5), reads=reads)
    assert resume_run(path, cfg, again, torch.optim.Adam(again.parameters()), gen).update == 1
    assert torch.equal(again.actor[0].weight, agent.actor[0].weight)
    Checkpoint(
        full.state_dict(), opt.state_dict(), 1, 9, asdict(cfg), gen.get_state(), newsvendor_tail=TAIL_VERSION
    ).save(path)
    with pytest.raises(CheckpointError, match="reads features that actor_features leaves out"):
        resume_run(path, cfg, again, torch.optim.Adam(again.parameters()), gen)
    with pytest.raises(RuntimeError, match="not exported"):
        write_model(again, MAPPING, tmp_path / "m", "x", {}, {}, {})
    assert not (tmp_path / "m").exists()
    flipped = x[:500].copy()
    flipped[:, cols[0]] *= -1.0
    assert (sess.run(["action"], {"features": flipped})[0] != act).mean() > 0.3
