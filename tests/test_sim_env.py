"""The simulator (issue 2): gymnasium conformance, per-step vs vector parity, the seed semantics of the fleet
core, and the synthetic load."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from fleetpilot import training
from fleetpilot.policies.observation import DAY_MINUTES, FEATURE_NAMES, ObservationBuilder, _gather
from fleetpilot.sim.fleet import FleetCore, standard_normal_at
from fleetpilot.sim.load import synthetic_load
from fleetpilot.sim.params import FleetParams, SyntheticLoadParams
from fleetpilot.training.env import WebFleetEnv, WebFleetVectorEnv

# --- gymnasium conformance ----------------------------------------------------------------------------------


def test_check_env_passes_without_warnings():
    env = WebFleetEnv(episode_minutes=300)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    assert not caught, [str(w.message) for w in caught]


def test_registered_env_and_vector_entry_point():
    assert training.ENV_ID in gym.registry
    env = gym.make(training.ENV_ID)
    assert isinstance(env.unwrapped, WebFleetEnv)
    assert env.spec.max_episode_steps == 10_000
    venv = gym.make_vec(training.ENV_ID, num_envs=3, vectorization_mode="vector_entry_point", episode_minutes=50)
    assert type(venv) is WebFleetVectorEnv
    assert venv.num_envs == 3 and venv.episode_minutes == 50
    obs, _ = venv.reset(seed=1)
    assert obs.shape == (3, venv.single_observation_space.shape[0]) and obs.dtype == np.float32
    assert venv.observation_space.contains(obs)
    env.close()
    venv.close()


# --- parity: fleet i of a vector env seeded s == per-step env seeded s + i -----------------------------------


def _run_parity(
    n: int,
    seed: int,
    steps: int,
    episode_minutes: int,
    options: dict | None = None,
    per_env_options: list[dict] | None = None,
) -> int:
    """Step both on the same random actions; assert equality each step; return the number of autoresets."""
    venv = WebFleetVectorEnv(n, episode_minutes=episode_minutes)
    envs = [WebFleetEnv(episode_minutes=episode_minutes) for _ in range(n)]
    vobs, _ = venv.reset(seed=seed, options=options)
    for i, e in enumerate(envs):
        o, _ = e.reset(seed=seed + i, options=per_env_options[i] if per_env_options else options)
        np.testing.assert_array_equal(o, vobs[i])
    rng = np.random.default_rng(seed)
    resets = 0
    for t in range(steps):
        a = rng.integers(0, venv.single_action_space.n, size=n)
        vobs, vrew, vterm, vtrunc, info = venv.step(a)
        assert not vterm.any()
        for i, e in enumerate(envs):
            o, r, term, trunc, _ = e.step(int(a[i]))
            assert not term
            assert trunc == vtrunc[i], (t, i)
            assert r == vrew[i], (t, i, r, vrew[i])
            if trunc:
                resets += 1
                np.testing.assert_array_equal(o, info["final_obs"][i])
                assert info["_final_obs"][i]
                o, _ = e.reset()  # no options: the next episode's load comes from the env's own RNG
            np.testing.assert_array_equal(o, vobs[i], err_msg=f"minute {t}, fleet {i}")
    return resets


def test_vector_env_matches_per_step_env_across_autoresets():
    # 1,600-minute episodes: two autoresets within 3,300 steps, and day-ago features after minute 1,442
    resets = _run_parity(n=3, seed=11, steps=3300, episode_minutes=1600)
    assert resets == 3 * 2


def test_vector_env_matches_per_step_env_on_an_injected_load():
    rng = np.random.default_rng(5)
    load = np.floor(rng.uniform(0, 25_000, size=601)) * 1.5  # non-integer loads, bursts above the fleet
    load[100:110] = 0.0  # zero-load minutes
    # the injected load ends after 600 minutes (< episode_minutes): truncation, then synthetic episodes
    resets = _run_parity(n=2, seed=3, steps=900, episode_minutes=700, options={"load": load, "start_minute": 123_456})
    assert resets == 2


def test_vector_env_takes_one_load_per_fleet():
    rng = np.random.default_rng(8)
    loads = np.floor(rng.uniform(0, 20_000, size=(2, 401)))
    per_env = [{"load": loads[0]}, {"load": loads[1]}]
    _run_parity(n=2, seed=21, steps=400, episode_minutes=400, options={"load": loads}, per_env_options=per_env)


def test_info_reports_the_fleet_state():
    venv = WebFleetVectorEnv(2, episode_minutes=50)
    venv.reset(seed=0, options={"load": np.full(51, 9000.0)})
    _, _, _, _, info = venv.step(np.array([venv.d + 4, venv.d - 3]))  # +4 ordered; -3 removed at once
    assert list(info["active"]) == [50, 47]
    assert list(info["warming"]) == [4, 0]
    assert list(info["load_tpm"]) == [9000.0, 9000.0]


# --- seed semantics of the fleet core ----------------------------------------------------------------------


def _core(n: int = 1, **kw) -> FleetCore:
    core = FleetCore(n, FleetParams(**kw))
    core.reset(slice(None), np.arange(1, n + 1, dtype=np.uint64))
    return core


@pytest.mark.parametrize("warmup", [1, 3, 5])
def test_ordered_machines_join_exactly_warmup_minutes_later(warmup):
    core = _core(warmup_minutes=warmup)
    out = core.step(np.array([7]), np.array([1000.0]))  # ordered in minute 1
    assert out.ordered[0] == 7 and out.active[0] == 50 and core.warming[0] == 7
    for minute in range(2, warmup + 1):
        out = core.step(np.array([0]), np.array([1000.0]))
        assert out.active[0] == 50 and core.warming[0] == 7, minute
    out = core.step(np.array([0]), np.array([1000.0]))  # minute warmup + 1
    assert out.active[0] == 57 and core.warming[0] == 0
    np.testing.assert_array_equal(core.warming, core.queue.sum(axis=1))


def test_no_warmup_joins_at_once():
    core = _core(warmup_minutes=0)
    out = core.step(np.array([4]), np.array([1000.0]))
    assert out.active[0] == 54 and core.warming[0] == 0


def test_removal_is_immediate_bounded_and_never_below_zero():
    core = _core(initial_machines=12)
    out = core.step(np.array([-4]), np.array([1000.0]))
    assert out.active[0] == 8 and out.removed[0] == 4
    out = core.step(np.array([-25]), np.array([1000.0]))  # at most 10 per minute
    assert out.active[0] == 0 and out.removed[0] == 8  # and never below zero
    out = core.step(np.array([-3]), np.array([1000.0]))
    assert out.active[0] == 0 and out.removed[0] == 0


def test_orders_are_limited_per_minute_and_the_fleet_is_capped():
    core = _core(initial_machines=50, max_machines=55, warmup_minutes=2)
    out = core.step(np.array([25]), np.array([1000.0]))
    assert out.ordered[0] == 10 and core.warming[0] == 10
    core.step(np.array([0]), np.array([1000.0]))
    out = core.step(np.array([0]), np.array([1000.0]))
    assert out.active[0] == 55  # 50 + 10 capped at 55
    assert core.warming[0] == 0


def test_zero_load_minutes_are_not_downtime():
    core = _core(2, initial_machines=0)
    core.active[1] = 50
    out = core.step(np.array([0, 0]), np.array([0.0, 0.0]))
    assert not out.down.any()
    assert out.reward[0] == 0.0
    assert out.reward[1] == pytest.approx(-50 * 0.05)


def test_capacity_noise_is_common_to_every_fleet_with_the_same_key_and_minute():
    p = FleetParams()
    a, b = FleetCore(3, p), FleetCore(3, p)
    keys = np.array([7, 7, 99], dtype=np.uint64)
    a.reset(slice(None), keys)
    b.reset(slice(None), keys)
    a.active[:] = [50, 80, 80]
    b.active[:] = [50, 80, 80]
    b.step(np.array([0, 0, 0]), np.full(3, 1000.0))  # b is one minute ahead
    oa = a.step(np.array([0, 0, 0]), np.full(3, 1000.0))
    x = p.capacity_tpm_per_machine + p.capacity_sigma_tpm * standard_normal_at(keys, np.ones(3, dtype=np.int64))
    np.testing.assert_array_equal(oa.capacity_tpm, np.trunc(oa.active * x))
    assert x[0] == x[1] != x[2]  # same key and minute -> same per-machine capacity, whatever the fleet size
    ob = b.step(np.array([0, 0, 0]), np.full(3, 1000.0))  # minute 2 differs from minute 1
    assert ob.capacity_tpm[0] != oa.capacity_tpm[0]
    # the draw is a function of (key, minute) only
    np.testing.assert_array_equal(
        standard_normal_at(keys, np.array([5, 5, 5])), standard_normal_at(keys, np.array([5, 5, 5]))
    )


def test_standard_normal_at_is_standard_normal():
    z = standard_normal_at(np.uint64(12345), np.arange(200_000))
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    assert abs(np.mean(z > 1.96) - 0.025) < 0.002
    assert np.isfinite(z).all()


def test_reward_arithmetic_on_hand_checked_minutes():
    core = _core(4, capacity_sigma_tpm=0.0)  # capacity = 50 x 300 = 15,000 tpm exactly
    out = core.step(np.zeros(4, dtype=np.int64), np.array([12_000.0, 15_070.0, 15_080.0, 16_000.0]))
    np.testing.assert_array_equal(out.capacity_tpm, [15_000.0] * 4)
    np.testing.assert_array_equal(out.served_tpm, [12_000.0, 15_000.0, 15_000.0, 15_000.0])
    # 15,000 / 15,070 = 99.54% is served (not down); 15,000 / 15,080 = 99.47% is down
    np.testing.assert_array_equal(out.down, [False, False, True, True])
    # 12,000 x $0.90/1000 - 50 x $0.05 = 10.80 - 2.50; 13.50 - 2.50; 13.50 - 2.50 - 200
    np.testing.assert_allclose(out.reward, [8.3, 11.0, -189.0, -189.0], rtol=0, atol=1e-12)


def test_reward_with_noise_on_a_hand_checked_minute():
    p = FleetParams()
    core = FleetCore(1, p)
    core.reset(slice(None), np.uint64(2024))
    out = core.step(np.array([-2]), np.array([14_000.0]))  # 48 machines
    z = float(standard_normal_at(np.uint64(2024), 1))
    cap = int(48 * (300.0 + 30.0 * z))
    assert out.capacity_tpm[0] == cap
    served = min(14_000.0, cap)
    down = served < 0.995 * 14_000.0
    assert out.reward[0] == pytest.approx(served * 0.0009 - 48 * 0.05 - 200.0 * down, abs=1e-9)


# --- synthetic load ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_synthetic_load_range_shape_and_determinism(seed):
    minutes = 20_000
    load = synthetic_load(np.random.default_rng(seed), minutes)
    again = synthetic_load(np.random.default_rng(seed), minutes)
    np.testing.assert_array_equal(load, again)
    assert not np.array_equal(load, synthetic_load(np.random.default_rng(seed + 100), minutes))
    assert load.shape == (minutes,) and np.all(load == np.floor(load))
    # daily min 1,000-2,000, max min + 5,000-7,000, x (1 +- 20%) low frequency, x noise up to 5%, + spikes
    # of at most 20% of the daily maximum
    assert load.min() > 0
    assert np.quantile(load, 0.01) >= 1000 * 0.8 * 0.85
    assert load.max() <= 9000 * 1.2 * 1.25 + 0.2 * 9000
    assert np.quantile(load, 0.99) >= (1000 + 5000) * 0.8 * 0.85
    # the daily cycle: the load a day apart is strongly correlated
    assert np.corrcoef(load[:-DAY_MINUTES], load[DAY_MINUTES:])[0, 1] > 0.8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_load_has_spikes(seed):
    minutes = 20_000
    base = SyntheticLoadParams(spike_height_share=(0.0, 0.0))  # same random draws, spikes of height 0
    spiky = synthetic_load(np.random.default_rng(seed), minutes)
    calm = synthetic_load(np.random.default_rng(seed), minutes, base)
    extra = spiky - calm
    assert extra.min() >= -1.0  # only the floor can differ where there is no spike
    on = extra > 50
    starts = np.flatnonzero(on & ~np.concatenate([[False], on[:-1]]))
    # quiet gaps of 100-1,000 minutes between spikes: at least 20,000 / (1,000 + spike length) spikes
    assert len(starts) >= 10, len(starts)
    assert starts[0] >= 99
    hi = 2000 + 7000
    assert extra.max() <= 0.2 * hi + 1


def test_synthetic_load_is_clipped_to_the_maximum():
    load = synthetic_load(np.random.default_rng(4), 5000, max_load_tpm=3000.0)
    assert load.max() == 3000.0


# --- the observation builder's fast paths keep the features' values ----------------------------------------


def test_seasonal_window_mean_matches_numpy_mean_of_the_gathered_window():
    """The builder's day-ago features sum 5 lags in order and divide by 5: the same value, bit for bit, as
    numpy's mean of the gathered window (LoadHistory.window_mean), on non-integer loads."""
    rng = np.random.default_rng(0)
    b = ObservationBuilder(6, 300.0, 5, history_minutes=DAY_MINUTES + 40)
    for t in range(DAY_MINUTES + 60):
        b.update(rng.uniform(0, 1e5, 6) * rng.random(), np.full(6, 10), np.zeros(6), np.full(6, 1_000_000 + t))
        if t > 20:
            for k in (0, 3, 17):
                ref = (
                    b.buf[(b.pos[:, None] - 1 - np.arange(k, k + 5)[None, :]) % b.h, np.arange(6)[:, None]]
                    .astype(np.float64)
                    .mean(axis=1)
                )
                np.testing.assert_array_equal(b._mean5(k), ref)
                np.testing.assert_array_equal(b.history.window_mean(k, k + 4), ref)
                np.testing.assert_array_equal(
                    _gather(b.buf, b.pos, k, k + 4),
                    b.buf[(b.pos[:, None] - 1 - np.arange(k, k + 5)) % b.h, np.arange(6)[:, None]],
                )


# --- the load-jump detector (feature jump_age) --------------------------------------------------------------


def _feed(loads: np.ndarray, minute0: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Feed (N, T) loads into a builder; returns the (N, T) jump ages and re-rise ages after each minute."""
    n, t_len = loads.shape
    b = ObservationBuilder(n, 300.0, 5)
    ages = np.zeros((n, t_len), dtype=np.int64)
    rerise = np.zeros((n, t_len), dtype=np.int64)
    for t in range(t_len):
        b.update(loads[:, t], np.full(n, 20), np.zeros(n), np.full(n, minute0 + t))
        obs = b.observation()
        ages[:, t], rerise[:, t] = obs.jump_age_minutes, obs.rerise_age_minutes
        assert np.array_equal(
            obs.features[:, FEATURE_NAMES.index("jump_age")],
            (np.minimum(obs.jump_age_minutes, 1000) / 100.0).astype(np.float32),
        )
        assert np.array_equal(
            obs.features[:, FEATURE_NAMES.index("rerise_age")],
            (np.minimum(obs.rerise_age_minutes, 10_000) / 1000.0).astype(np.float32),
        )
    return ages, rerise


def _daily(rng, n: int, t_len: int, noise: float) -> np.ndarray:
    """A daily sine between 1,500 and 8,000 tpm with multiplicative noise, random phase per row."""
    t = np.arange(t_len)[None, :]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    return np.floor((4750 + 3250 * np.sin(2 * np.pi * t / DAY_MINUTES + phase)) * rng.normal(1, noise, (n, t_len)))


def test_jumps_are_detected_within_three_minutes_and_nowhere_else():
    """Sudden rises of 15% of the daily maximum on a noisy daily cycle (1% to 2.5% noise, every part of the day)
    are found within 3 minutes; the rest of 3 days x 8 loads gives no detection. (The detector wants a rise
    above 5 standard errors: at the peak of a 5% noise load it sees only the larger spikes.)"""
    rng = np.random.default_rng(11)
    t_len = 3 * DAY_MINUTES
    loads = _daily(rng, 8, t_len, 0.0)
    loads *= rng.normal(1, np.linspace(0.01, 0.025, 8)[:, None], loads.shape)
    onsets = np.arange(300, t_len - 200, 450)
    for first in onsets:  # 1,200 tpm, decaying linearly over 60 minutes like the seed's spikes
        loads[:, first : first + 60] += 1200 * (1 - np.arange(60) / 60)
    ages, rerise = _feed(loads)
    assert (rerise > 1000).all()  # each spike decays: nothing rises again after its jump
    detected = ages == 0
    for row in range(8):
        hits = np.nonzero(detected[row])[0]
        assert len(hits) == len(onsets), (row, hits, onsets)
        assert np.all((hits >= onsets) & (hits <= onsets + 3)), (row, hits, onsets)


def test_noise_and_the_daily_cycle_alone_make_no_jumps():
    rng = np.random.default_rng(12)
    ages, rerise = _feed(_daily(rng, 8, 3 * DAY_MINUTES, 0.05))
    assert not (ages == 0).any()
    assert (ages > 1000).all() and (rerise > 1000).all()  # never a jump: the ages stay at "none"


def test_jump_age_counts_minutes_a_second_rise_soon_after_is_a_rerise_and_ages_survive_gaps():
    load = np.full(600, 3000.0)
    load[100:] += 1000  # a step up: one jump
    load[160:] += 1000  # 60 minutes later: within the refractory time, a re-rise, not a new jump
    load[400:] += 1000  # 300 minutes later: a new jump
    ages, rerise = (a[0] for a in _feed(load[None, :]))
    assert ages[99] > 1000 and ages[100] in (0, 1, 2)
    assert rerise[159] > 1000 and rerise[160:163].min() == 0
    last = int(np.nonzero(rerise[:300] == 0)[0].max())
    assert np.array_equal(rerise[last : last + 200], np.arange(200))
    assert rerise[400:420].min() > 0  # a jump after the refractory time is a jump, not a re-rise
    first = int(np.argmax(ages == 0))
    assert np.array_equal(ages[first : first + 250], np.arange(250))
    assert ages[400:403].min() == 0
    b = ObservationBuilder(1, 300.0, 5)
    for t, v in enumerate(load[:150]):
        b.update(np.array([v]), np.array([20]), np.array([0]), np.array([t]))
    age = int(b.observation().jump_age_minutes[0])
    b.update(np.array([4000.0]), np.array([20]), np.array([0]), np.array([149 + 11]))  # 10 minutes missing
    assert int(b.observation().jump_age_minutes[0]) == age + 11
