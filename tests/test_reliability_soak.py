"""Soak, the CI version: 5,000 simulated minutes through the daemon's real tick (benchmarks/soak.py; the
100,000-minute run and its figures are in docs/reliability.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("fleetpilot_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_soak_5000_minutes(tmp_path):
    soak = _soak_module()
    r = soak.soak(5_000, groups=1, policy="target-tracking", warmup=2_000, sample_every=500, journal_dir=tmp_path)
    assert soak.check(r) == [], r
    assert r["ticks"] == {"ok": 5_000} and r["error_ticks"] == 0 and r["partial_ticks"] == 0
    assert r["journal_rows"] == r["decisions"] == 5_000 and r["journal_integrity"] == "ok"
    assert r["rss_growth_after_warmup_mb"] <= soak.MAX_GROWTH_MB
    assert len(r["rss_samples"]) >= 10  # memory was sampled over the run, not only at its ends


def test_check_flags_each_missed_target():
    soak = _soak_module()
    good = {
        "minutes": 10,
        "groups": 1,
        "error_ticks": 0,
        "journal_rows": 10,
        "decisions": 10,
        "journal_integrity": "ok",
        "rss_growth_after_warmup_mb": 1.0,
    }
    assert soak.check(good) == []
    assert "error ticks" in soak.check({**good, "error_ticks": 1})[0]
    assert "journal rows" in soak.check({**good, "journal_rows": 9})[0]
    assert "grew" in soak.check({**good, "rss_growth_after_warmup_mb": 10.5})[0]
