"""The broad training distribution (issue 12, item 2): the randomized generator, the mixture sampler over it and
the development traces, `fleetpilot train --loads broad` and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from fleetpilot.sim.load import BROAD_DRAWS, Load, broad_load, read_trace, synthetic_load, write_trace
from fleetpilot.sim.params import BroadLoadParams, TraceWindowParams
from fleetpilot.training.env import MixtureSampler

FLEETPILOT = [sys.executable, "-m", "fleetpilot.controller.cli"]
TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason="the development traces are not here")
SMOKE = "num_envs: 8\nnum_steps: 32\nepisode_minutes: 300\neval_seeds: [500]\neval_minutes: 200\n"
SMOKE += "eval_every_updates: 2\ninit_loads: 4\n"


def _noise_level(load: np.ndarray) -> float:
    """Per-minute noise relative to the level: the median |second difference| over the median load."""
    d2 = np.abs(load[1:-1] - 0.5 * (load[:-2] + load[2:]))
    return float(np.median(d2) / max(np.median(load), 1.0))


def _spikiness(load: np.ndarray) -> float:
    """How far the busiest minutes rise above an hour's median around them (99.9th percentile of the ratio)."""
    pad = np.pad(load, 30, mode="edge")
    med = np.median(sliding_window_view(pad, 61)[: load.size], axis=1)
    return float(np.quantile(load / np.maximum(med, 1.0), 0.999))


def test_the_generator_is_deterministic_for_a_seed():
    a = broad_load(np.random.default_rng(7), 3000)
    b = broad_load(np.random.default_rng(7), 3000)
    c = broad_load(np.random.default_rng(8), 3000)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not np.array_equal(a[0], c[0]) and a[2] != c[2]


def test_every_draw_respects_its_ranges():
    p = BroadLoadParams()
    rng = np.random.default_rng(11)
    seen = {name: [] for name in BROAD_DRAWS}
    for _ in range(150):
        load, start, d = broad_load(rng, 2000, p, max_load_tpm=50_000.0)
        for name in BROAD_DRAWS:
            lo, hi = getattr(p, name)
            assert lo <= d[name] <= hi, (name, d[name])
            seen[name].append(d[name])
        assert 0 <= d["start_offset_minutes"] < 7 * 1440
        assert load.min() >= 0 and load.max() <= 50_000.0 and np.all(load == np.floor(load))
        assert load.max() >= 0.25 * min(d["peak_tpm"], 50_000.0)
    for name, values in seen.items():  # the draws cover their ranges, not one corner
        lo, hi = getattr(p, name)
        if p.is_log(name):
            lo, hi, values = np.log(lo), np.log(hi), np.log(values)
        assert np.ptp(values) > 0.6 * (hi - lo), name


def test_a_narrow_generator_gives_its_peak_and_no_spikes():
    p = BroadLoadParams(
        peak_tpm=(2000.0, 2000.0),
        noise_share=(0.001, 0.001),
        count_noise=False,
        spikes_per_day=(1e-9, 1e-9),
        daily_floor_share=(0.5, 0.5),
        weekend_share=(1.0, 1.0),
        trend_per_day=(0.0, 0.0),
        wander_amplitude=(0.0, 0.0),
    )
    load, _, d = broad_load(np.random.default_rng(3), 1440 * 3, p)
    assert d["spikes"] == 0
    assert 1980 <= load.max() <= 2020 and 980 <= load.min() <= 1020  # daily floor half the peak


def test_a_range_low_above_high_is_refused():
    with pytest.raises(ValueError, match="noise_share"):
        BroadLoadParams(noise_share=(0.2, 0.1))
    with pytest.raises(ValueError, match="log-uniform"):
        BroadLoadParams(spikes_per_day=(0.0, 1.0))


def test_draws_differ_in_noise_and_spikiness_far_more_than_the_seed_generator():
    rng = np.random.default_rng(5)
    broad = [broad_load(rng, 4000)[0] for _ in range(60)]
    seed = [synthetic_load(rng, 4000) for _ in range(60)]

    def spread(loads, stat):
        v = np.array([stat(x) for x in loads])
        return float(np.quantile(v, 0.9) / np.quantile(v, 0.1))

    assert spread(broad, _noise_level) > 8 and spread(broad, _noise_level) > 2.5 * spread(seed, _noise_level)
    assert spread(broad, _spikiness) > 1.5 * spread(seed, _spikiness)
    peaks = np.array([x.max() for x in broad])
    assert peaks.min() < 2000 and peaks.max() > 15_000  # scale: a few hundred to tens of thousands


def _toy_traces() -> list[Load]:
    t = np.arange(5000, dtype=np.float64)
    return [
        Load("a", 100 + 50 * np.sin(t / 229.0)),
        Load("b", 1000 + 900 * np.sin(t / 97.0) ** 2),
    ]


def test_the_mixture_is_deterministic_and_follows_its_weights():
    def draws(seed):
        s = MixtureSampler({"generator": 0.5, "a": 0.3, "b": 0.2}, _toy_traces())
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(300):
            load, start = s.sample(rng, 200)
            out.append((s.last["component"], float(load.sum()), start))
        return out

    first, again, other = draws(1), draws(1), draws(2)
    assert first == again and first != other
    share = {c: sum(x[0] == c for x in first) / len(first) for c in ("generator", "a", "b")}
    assert abs(share["generator"] - 0.5) < 0.1 and abs(share["a"] - 0.3) < 0.1 and abs(share["b"] - 0.2) < 0.1


def test_trace_windows_respect_their_ranges():
    w = TraceWindowParams(peak_tpm=(500.0, 800.0), stretch=(0.9, 1.1), count_noise=False, noise_share=(0.0, 0.0))
    s = MixtureSampler({"a": 1.0, "b": 1.0}, _toy_traces(), window=w)
    rng = np.random.default_rng(4)
    for _ in range(100):
        load, start = s.sample(rng, 400)
        d = s.last
        assert 500 <= d["peak_tpm"] <= 800 and d["peak_tpm"] - 1 <= load.max() <= d["peak_tpm"]
        assert 0.9 <= d["stretch"] <= 1.1 and abs(d["shift_minutes"]) <= w.shift_minutes
        assert d["first"] + d["covered_minutes"] <= 5000


def test_an_empty_mixture_or_an_unknown_component_is_refused():
    with pytest.raises(ValueError, match="empty"):
        MixtureSampler({"generator": 0.0})
    with pytest.raises(ValueError, match="neither"):
        MixtureSampler({"nasa": 1.0})


def _matches(window: np.ndarray, data: np.ndarray, k: int = 30) -> np.ndarray:
    """Offsets of `data` whose first k minutes are proportional to the window's (scale-free comparison)."""
    sig = window[:k] / window[:k].sum()
    s = sliding_window_view(data, k)
    sums = s.sum(axis=1)
    ok = sums > 0
    hit = np.zeros(s.shape[0], dtype=bool)
    hit[ok] = np.all(np.abs(s[ok] / sums[ok, None] - sig) < 1e-3, axis=1)
    return np.nonzero(hit)[0]


@needs_traces
def test_an_excluded_trace_is_never_drawn(tmp_path):
    """`--exclude-trace nasa`: the sampler holds no NASA data, and no drawn window matches any stretch of the
    NASA file, while each window does match its recorded source trace at its recorded minute."""
    from fleetpilot.controller.cli import build_parser
    from fleetpilot.training.cli import _broad_data, _train_config, parse_split

    argv = ["train", "--loads", "broad", "--exclude-trace", "nasa", "--out", str(tmp_path / "m")]
    args = build_parser().parse_args(argv + ["--mixture", "traces=1", "--test-minutes", "100"])
    cfg, fleet = _train_config(None, args)
    import dataclasses

    cfg = dataclasses.replace(cfg, episode_minutes=300, eval_minutes=100)
    data = _broad_data(args, cfg, fleet, parse_split(args.split))
    names = set(data.sampler.by_name)
    assert "nasa_http_jul95_minute" not in names and len(names) >= 5
    nasa = read_trace(TRACES / "nasa_http_jul95_minute.csv").load_tpm
    sampler = data.sampler
    sampler.window = TraceWindowParams(
        peak_tpm=(40_000.0, 40_000.0), stretch=(1.0, 1.0), noise_share=(0.0, 0.0), shift_minutes=0, count_noise=False
    )
    rng = np.random.default_rng(9)
    checked = 0
    for _ in range(120):
        window, _ = sampler.sample(rng, 300)
        src = sampler.last
        assert src["component"] != "nasa_http_jul95_minute"
        if window[:30].sum() < 1e5:  # too few requests for a scale-free comparison
            continue
        checked += 1
        assert _matches(window, nasa).size == 0
        assert src["first"] in _matches(window, sampler.by_name[src["trace"]].load_tpm)
    assert checked >= 40
    info = data.loads_info[0]["broad"]
    assert info["excluded"] == ["nasa_http_jul95_minute"]
    assert all("nasa" not in t["trace"] for t in info["traces"])
    assert not any("nasa" in r.name for r in data.val_runs + data.test_runs)


def _short_traces(d: Path) -> Path:
    """Three development traces cut to their first 3,000 minutes, and one of 90 minutes, in d/traces."""
    out = d / "traces"
    out.mkdir()
    for name in ("nasa_http_jul95_minute", "nab_tweets_ko_minute", "azure_functions2019_fn40d07b_minute"):
        load = read_trace(TRACES / f"{name}.csv")
        write_trace(out / f"{name}.csv", load.window(0, 3000, name))
    write_trace(out / "tiny.csv", Load("tiny", np.arange(90.0)))
    return out


@needs_traces
def test_train_broad_smoke_records_the_mixture(tmp_path):
    traces = _short_traces(tmp_path)
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(SMOKE)
    out = tmp_path / "model"
    cmd = FLEETPILOT + ["train", "--loads", "broad", "--broad-traces", str(traces), "--exclude-trace", "nab"]
    cmd += ["--config", str(cfg), "--steps", "512", "--seed", "3", "--test-seeds", "3000", "--test-minutes", "200"]
    r = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "the test part of 2 trace(s) and test seeds 3000" in r.stdout and "oracle" in r.stdout
    assert (out / "policy.onnx").is_file()
    m = json.loads((out / "manifest.json").read_text())
    broad = m["training"]["loads"][0]["broad"]
    assert broad["excluded"] == ["nab_tweets_ko_minute"]
    assert [t["trace"] for t in broad["traces"]] == ["azure_functions2019_fn40d07b_minute", "nasa_http_jul95_minute"]
    assert [x["trace"] for x in broad["left_out"]] == ["tiny"] and "too short" in broad["left_out"][0]["reason"]
    assert broad["weights"] == {
        "generator": 0.5,
        "azure_functions2019_fn40d07b_minute": 0.25,
        "nasa_http_jul95_minute": 0.25,
    }
    assert broad["generator"] == json.loads(BroadLoadParams().model_dump_json())
    assert broad["trace_windows"] == json.loads(TraceWindowParams().model_dump_json())
    assert broad["validation"]["generator_seeds"] == [500] and broad["test"]["generator_seeds"] == [3000]
    # validation and test come from the traces' later parts and the generator's own streams, never training's
    split = broad["traces"][0]["data_split"]
    assert split["train"]["minutes"] == [0, 1800] and split["test"]["minutes"] == [2400, 3000]
    runs = m["training"]["test"]["runs"]
    assert "broad-test-3000" in runs and all("nab" not in x for x in runs)
    assert "broad-validation-500" in m["validation"]["runs"]


@needs_traces
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--exclude-trace", "bogus"], "--exclude-trace bogus: unknown trace"),
        (["--exclude-trace", "nab"], "--exclude-trace nab: ambiguous"),
        (["--mixture", "generator=0,traces=0"], "the mixture is empty"),
        (["--mixture", "generator=x"], "is not a number"),
        (["--mixture", "bogus=1"], "--mixture bogus: unknown trace"),
        (["--trace", "TINY"], "too short for --loads broad"),
        (["--loads", "synthetic", "--exclude-trace", "nasa"], "--exclude-trace applies to --loads broad only"),
        (["--trace-dir", "."], "--loads broad trains one on the mixture"),
        (["--exclude-trace", "nasa", "--exclude-trace", "worldcup", "--mixture", "worldcup=1"], "left out by"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, extra, message):
    tiny = tmp_path / "tiny.csv"
    write_trace(tiny, Load("tiny", np.arange(2000.0)))
    extra = [str(tiny) if x == "TINY" else x for x in extra]
    loads = [] if "--loads" in extra else ["--loads", "broad"]
    cmd = FLEETPILOT + ["train", *loads, *extra, "--out", str(tmp_path / "m")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "m").exists()
