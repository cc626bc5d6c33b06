"""Every benchmark runs, with tiny settings, and writes its figures as one flat JSON object with `--json`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

#: script -> (tiny arguments, figures its JSON must hold: None a positive number, float any finite number, else
#: that value)
CASES = {
    "ppo_bench.py": (
        "--steps 256 --num-envs 8 --rollout-minutes 16 --epochs 1 --minibatches 2 --episode-minutes 300 --repeats 1",
        {
            "steps": 256,
            "rollout_steps": 128,
            "update_epochs": 1,
            "num_minibatches": 2,
            "minibatch_size": 64,
            "gradient_steps": 4,
            "fleetpilot_steps_per_s_p50": None,
            "sb3_steps_per_s_p50": None,
            "ratio_p50": None,
        },
    ),
    "inference_bench.py": (
        "--single 20 --batches 2",
        {
            "onnx_single_us_p50": None,
            "onnx_single_us_p99": None,
            "onnx_batch_10000_ms_p50": None,
            "torch_single_us_p50": None,
            "torch_batch_10000_ms_p50": None,
        },
    ),
    "daemon_bench.py": (
        "--groups 2,3 --ticks 2 --repeats 1 --shadow target-tracking --backfill 2",
        {
            "groups": "2,3",
            "first_decision_seconds_p50": None,
            "rss_mb": None,
            "g2_tick_seconds_p50": None,
            "g3_tick_seconds_p50": None,
            "g3_tick_seconds_p99": None,
            "g3_rss_mb": None,
            "g3_shadow_tick_seconds_p50": None,
            "g3_shadow_own_seconds_p50": None,
            "g3_history_minutes": 1440,
            "g3_warm_tail_share": 1.0,  # a day of history fed first: every group's rise tail is warm
            "backfill_groups": 2,
            "backfill_seconds": None,
            "backfill_hwm_mb": None,
        },
    ),
    "sim_bench.py": (
        "--repeats 1 --fleets 8 --seed-steps 100 --env-steps 10 --vector-steps 10 --warm-minutes 0",
        {
            "fleets": 8,
            "seed_port_steps_per_s_p50": None,
            "per_step_env_steps_per_s_p50": None,
            "vector_env_steps_per_s_p50": None,
        },
    ),
    "status_bench.py": (
        "--groups 2 --minutes 30 --loads 2",
        {"groups": 2, "page_ms_p50": None, "browser_ms_p50": None, "memory_delta_mb": None, "ok": None},
    ),
    "ray_bench.py": (
        "--cpus 2 --tasks 5 --seeds 0 --minutes 200 --repeats 1",
        {"per_task_overhead_ms_ray": None, "tune_speedup_p50": None, "tune_identical": True, "ray_start_s": None},
    ),
    "follow_the_leader.py": (
        "--traces azure-functions --windows 1 --window-minutes 600 --lead-minutes 1440 --trailing-minutes 120 "
        "--conservative-days 1 --lookahead-minutes 60 --same-hour-days 1 --same-hour-minutes 60 "
        "--surge 1.5:15:4,1.5:15:1",
        {
            "azure_functions_windows": 1,
            "azure_functions_oracle_pct_of_oracle": 100.0,
            "azure_functions_oracle_expected_profit_usd": None,
            "azure_functions_newsvendor_expected_profit_usd": float,  # any number: a bursty window loses money
            "azure_functions_best_fixed_pct_of_oracle": float,
            "azure_functions_trailing_120_pct_of_oracle": float,
            "azure_functions_cautious_1_days_pct_of_oracle": float,
            "azure_functions_lookahead_60_pct_of_oracle": float,
            "azure_functions_lookahead_60_gain_cheaper_pct_of_oracle": float,
            "azure_functions_same_hour_1d_60m_pct_of_oracle": float,
            "azure_functions_surge_1p5_15m_risk_4_pct_of_oracle": float,
            "azure_functions_surge_1p5_15m_risk_1_pct_of_oracle": float,
        },
    ),
    "noise_bound.py": (
        "--seeds 2000..2001 --minutes 600 --nodes 5",
        {"minutes": 600, "oracle_usd": None, "noise_blind_usd": None, "noise_blind_pct_oracle": None},
    ),
    "price_by_source.py": (
        "--seeds 1 --loads 8 --episode-minutes 1600",
        {
            "loads": 8,
            "seconds": None,
            "left_out_cases": None,  # one per source drawn (at least two: the generator and a trace)
            "s1_generator_own_best_advantage": float,
            "s1_generator_others_pick_advantage": float,
        },
    ),
    "backtest_bench.py": (
        "--seeds 1,2 --minutes 60 --policies target-tracking,newsvendor --repeats 1",
        {
            "policies": 2,
            "loads": 2,
            "minutes": 60,
            "alone_seconds_p50": None,
            "together_seconds_p50": None,
            "speedup_p50": None,
            "identical": True,
        },
    ),
    "soak.py": (
        "--minutes 200 --warmup 100 --sample-every 100 --policy target-tracking",
        {"minutes": 200, "error_ticks": 0, "journal_rows": 200, "tick_p50_ms": None, "ticks_ok": 200},
    ),
}


#: benchmarks whose tiny run needs more than a few seconds, each tested (with --json) in its own test module
COVERED_ELSEWHERE = {
    "generalization.py": "tests/test_generalization.py",
    "own_history.py": "tests/test_policy_iteration.py",
}


def test_every_benchmark_is_covered():
    assert sorted([*CASES, *COVERED_ELSEWHERE]) == sorted(p.name for p in BENCHMARKS.glob("*.py"))
    for module in COVERED_ELSEWHERE.values():
        assert (BENCHMARKS.parent / module).is_file()


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_writes_flat_json(script: str, tmp_path: Path):
    args, expect = CASES[script]
    out = tmp_path / "figures.json"
    r = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args.split(), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    # exit 1 means a target missed (a busy machine may miss a timing target); anything else is a failure
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert isinstance(figures, dict)
    assert all(isinstance(v, (int, float, str, bool)) for v in figures.values()), figures  # flat
    for key, value in expect.items():
        assert key in figures, (key, sorted(figures))
        if value is None:
            assert isinstance(figures[key], (int, float)) and figures[key] > 0, (key, figures[key])
        elif value is float:
            assert isinstance(figures[key], (int, float)) and math.isfinite(figures[key]), (key, figures[key])
        else:
            assert figures[key] == value, (key, figures[key])
    if script == "follow_the_leader.py":
        # a surge reaction at the rule's own price is the rule, replayed on its own, to the cent
        rule = figures["azure_functions_newsvendor_expected_profit_usd"]
        assert figures["azure_functions_surge_1p5_15m_risk_1_expected_profit_usd"] == rule
        # the look-ahead's gain over the rule is split over the minutes by what it held, every minute once
        ahead = "azure_functions_lookahead_60"
        parts = sum(figures[f"{ahead}_gain_{p}_expected_profit_usd"] for p in ("cheaper", "cautious", "at_rule"))
        assert parts == pytest.approx(figures[f"{ahead}_expected_profit_usd"] - rule, abs=0.03)
    if script == "price_by_source.py":
        # the rule's own advantage is 0 and the other sources' pick is one of the actions: neither beats a
        # left-out source's own best
        own = [k for k in figures if k.endswith("_own_best_advantage")]
        assert len(own) == figures["left_out_cases"] >= 2
        for key in own:
            other = figures[key.replace("_own_best_", "_others_pick_")]
            assert figures[key] >= max(0.0, other), (key, figures[key], other)
