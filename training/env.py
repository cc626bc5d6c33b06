"""Gymnasium environments over the fleet core: `WebFleetEnv` (one fleet) and `WebFleetVectorEnv` (N fleets).

Both share `FleetCore` and the one `ObservationBuilder`; fleet i of a vector env seeded with s runs exactly
as a `WebFleetEnv` seeded with s + i on the same load (test).

## Action
| | |
|---|---|
| space | `Discrete(2 D + 1)`, D = max machines per minute (10 in the seed) |
| meaning | a - D machines: positive orders machines (they join after the warm-up), negative removes active ones at once |

## Observation
`Box(-10, 10, (OBS_DIM,), float32)`: the features of `policies.observation` (scale-free, version `OBS_VERSION`).

## Reward
Per minute, in US dollars: served transactions x $0.90 / 1000 - active machines x $0.05 - $200 if less than
99.5% of the load was served (seed objective; see `sim.fleet`).

## Episode end
Never terminated; truncated after `episode_minutes` minutes (10,000), or when an injected load runs out.
Options of `reset`: `load` (an array of minutes + 1 loads: minute 0 is observed at reset, the rest are stepped)
and `start_minute` (minutes since the epoch of minute 0, for time-of-day features).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv

from fleetpilot.policies.observation import OBS_DIM, Observation, ObservationBuilder
from fleetpilot.sim.fleet import FleetCore, expected_reward
from fleetpilot.sim.load import (
    SYNTHETIC_START,
    Augment,
    Load,
    broad_load,
    sample_window,
    synthetic_load,
    trace_episode,
)
from fleetpilot.sim.params import BroadLoadParams, FleetParams, SyntheticLoadParams, TraceWindowParams

_OBS_SPACE = spaces.Box(-10.0, 10.0, (OBS_DIM,), np.float32)


class LoadSampler:
    """Draws the load of one episode: the seed's synthetic load, or windows of real traces (augmented)."""

    def __init__(
        self,
        traces: list[Load] | None = None,
        synthetic: SyntheticLoadParams | None = None,
        augment: Augment | None = None,
        max_load_tpm: float = 100_000.0,
    ):
        self.traces = list(traces or [])
        self.synthetic = synthetic or SyntheticLoadParams()
        self.augment = augment
        self.max_load_tpm = max_load_tpm
        self.last: dict[str, Any] = {}
        """what the latest draw was: its `component` (the trace's name, or the seed's generator)"""

    def sample(self, rng: np.random.Generator, minutes: int) -> tuple[np.ndarray, int]:
        """(load of `minutes` minutes, epoch minute of its first value)."""
        if not self.traces:
            self.last = {"component": SEED_GENERATOR}
            return (
                synthetic_load(rng, minutes, self.synthetic, self.max_load_tpm),
                int(SYNTHETIC_START.timestamp() // 60),
            )
        fits = [t for t in self.traces if t.minutes >= minutes]
        if not fits:
            raise ValueError(f"no trace has the {minutes} minutes an episode needs")
        trace = fits[int(rng.integers(len(fits)))]
        self.last = {"component": trace.name}
        w = sample_window(rng, trace, minutes, self.augment)
        return np.minimum(w.load_tpm, self.max_load_tpm), w.start_minute()


#: Mixture components that are not traces: the randomized generator and the seed's generator.
GENERATOR, SEED_GENERATOR = "generator", "seed"


class MixtureSampler(LoadSampler):
    """The broad training distribution: each episode picks a component by weight, then draws from it:
    `generator` (a randomized generator, `sim.load.broad_load`), `seed` (the seed's generator) or a trace's
    name (a window of that trace, `sim.load.trace_episode`). A trace that is not given can never be drawn;
    `last` says what the latest draw was (component, window, drawn parameters)."""

    def __init__(
        self,
        weights: dict[str, float],
        traces: list[Load] | None = None,
        generator: BroadLoadParams | None = None,
        window: TraceWindowParams | None = None,
        synthetic: SyntheticLoadParams | None = None,
        max_load_tpm: float = 100_000.0,
    ):
        super().__init__(traces, synthetic, None, max_load_tpm)
        self.by_name = {t.name: t for t in self.traces}
        if len(self.by_name) != len(self.traces):
            raise ValueError("two traces share a name")
        for name, w in weights.items():
            if name not in (GENERATOR, SEED_GENERATOR) and name not in self.by_name:
                raise ValueError(f"mixture weight for {name!r}, which is neither a component nor a given trace")
            if not w >= 0:
                raise ValueError(f"mixture weight {name}={w}: must be non-negative")
        self.components = [name for name, w in weights.items() if w > 0]
        if not self.components:
            raise ValueError("the mixture is empty: every weight is 0")
        total = sum(weights[c] for c in self.components)
        self.weights = {c: weights[c] / total for c in self.components}
        self._cum = np.cumsum([self.weights[c] for c in self.components])
        self.generator = generator or BroadLoadParams()
        self.window = window or TraceWindowParams()
        self.last: dict[str, Any] = {}

    def sample(self, rng: np.random.Generator, minutes: int) -> tuple[np.ndarray, int]:
        pick = self.components[min(int(np.searchsorted(self._cum, rng.random() * self._cum[-1])), len(self._cum) - 1)]
        if pick == GENERATOR:
            load, start, drawn = broad_load(rng, minutes, self.generator, self.max_load_tpm)
        elif pick == SEED_GENERATOR:
            load = synthetic_load(rng, minutes, self.synthetic, self.max_load_tpm)
            start, drawn = int(SYNTHETIC_START.timestamp() // 60), {}
        else:
            load, start, drawn = trace_episode(rng, self.by_name[pick], minutes, self.window)
        self.last = {"component": pick, **drawn}
        return np.minimum(load, self.max_load_tpm), start

    def describe(self) -> dict[str, Any]:
        """What the manifest records: the weights, the generator's ranges and how trace windows are drawn."""
        return {
            "weights": {c: round(w, 6) for c, w in self.weights.items()},
            "generator": self.generator.model_dump(),
            "trace_windows": self.window.model_dump(),
            "seed_generator": self.synthetic.model_dump() if SEED_GENERATOR in self.weights else None,
        }


def _params(fleet: FleetParams | dict | None) -> FleetParams:
    return fleet if isinstance(fleet, FleetParams) else FleetParams(**(fleet or {}))


class WebFleetEnv(gym.Env):
    """One simulated web fleet under a load (see the module docstring for the tables)."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        fleet: FleetParams | dict | None = None,
        sampler: LoadSampler | None = None,
        episode_minutes: int | None = None,
    ):
        self.params = _params(fleet)
        self.sampler = sampler or LoadSampler(max_load_tpm=self.params.max_load_tpm)
        self.episode_minutes = int(episode_minutes or self.params.episode_minutes)
        self.d = self.params.max_delta
        self.action_space = spaces.Discrete(2 * self.d + 1)
        self.observation_space = _OBS_SPACE
        self.core = FleetCore(1, self.params)
        self.builder = ObservationBuilder(1, self.params.capacity_tpm_per_machine, self.params.warmup_minutes)
        self.load = np.zeros(1)
        self.start_minute = 0
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "load" in options:
            self.load = np.asarray(options["load"], dtype=np.float64)
            self.start_minute = int(options.get("start_minute", SYNTHETIC_START.timestamp() // 60))
        else:
            self.load, self.start_minute = self.sampler.sample(self.np_random, self.episode_minutes + 1)
        key = self.np_random.integers(0, 2**63, dtype=np.uint64)
        self.core.reset(slice(None), key)
        self.builder.reset()
        self.t = 0
        self.builder.update(self.load[:1], self.core.active, self.core.warming, np.array([self.start_minute]))
        return self.builder.observation().features[0], {"load_tpm": float(self.load[0])}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        self.t += 1
        out = self.core.step(np.array([int(action) - self.d]), self.load[self.t : self.t + 1])
        self.builder.update(out.load_tpm, out.active, self.core.warming, np.array([self.start_minute + self.t]))
        obs = self.builder.observation().features[0]
        truncated = self.t >= min(self.episode_minutes, self.load.shape[0] - 1)
        info = {
            "load_tpm": float(out.load_tpm[0]),
            "active": int(out.active[0]),
            "warming": int(self.core.warming[0]),
            "capacity_tpm": float(out.capacity_tpm[0]),
            "down": bool(out.down[0]),
        }
        return obs, float(out.reward[0]), False, bool(truncated), info


class WebFleetVectorEnv(VectorEnv):
    """N fleets stepped together in numpy; fleet i seeded with seed + i. Autoreset in the same step
    (the final observation is in `info["final_obs"]`)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        fleet: FleetParams | dict | None = None,
        sampler: LoadSampler | None = None,
        episode_minutes: int | None = None,
        max_episode_steps: int | None = None,
        expected_reward: bool = False,
    ):
        self.params = _params(fleet)
        #: reward = the expected reward over the capacity noise (same objective, lower variance: for training)
        self.expected_reward = bool(expected_reward)
        self.num_envs = int(num_envs)
        self.sampler = sampler or LoadSampler(max_load_tpm=self.params.max_load_tpm)
        self.episode_minutes = int(episode_minutes or max_episode_steps or self.params.episode_minutes)
        self.d = self.params.max_delta
        self.single_action_space = spaces.Discrete(2 * self.d + 1)
        self.action_space = spaces.MultiDiscrete(np.full(self.num_envs, 2 * self.d + 1))
        self.single_observation_space = _OBS_SPACE
        self.observation_space = spaces.Box(-10.0, 10.0, (self.num_envs, OBS_DIM), np.float32)
        self.core = FleetCore(self.num_envs, self.params)
        self.builder = ObservationBuilder(
            self.num_envs, self.params.capacity_tpm_per_machine, self.params.warmup_minutes
        )
        self.loads = np.zeros((self.num_envs, self.episode_minutes + 1))
        self.length = np.full(self.num_envs, self.episode_minutes, dtype=np.int64)
        self.start_minute = np.zeros(self.num_envs, dtype=np.int64)
        self.t = np.zeros(self.num_envs, dtype=np.int64)
        self.rngs: list[np.random.Generator] = [seeding.np_random(None)[0] for _ in range(self.num_envs)]
        self._rows = np.arange(self.num_envs)
        self.last_obs: Observation | None = None  #: the full Observation behind the last returned features

    def _reset_rows(self, rows: np.ndarray, options: dict[str, Any]) -> None:
        loads = options.get("load")
        for i in rows:
            if loads is not None:
                row = np.asarray(loads[i] if np.ndim(loads) == 2 else loads, dtype=np.float64)
                n = min(row.shape[0], self.episode_minutes + 1)
                self.loads[i, :n] = row[:n]
                self.length[i] = n - 1
                self.start_minute[i] = int(options.get("start_minute", SYNTHETIC_START.timestamp() // 60))
            else:
                self.loads[i], self.start_minute[i] = self.sampler.sample(self.rngs[i], self.episode_minutes + 1)
                self.length[i] = self.episode_minutes
            self.core.reset(i, self.rngs[i].integers(0, 2**63, dtype=np.uint64))
        self.t[rows] = 0
        self.builder.reset(rows)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            seeds = seed if isinstance(seed, (list, tuple)) else [seed + i for i in range(self.num_envs)]
            self.rngs = [seeding.np_random(s)[0] for s in seeds]
        self._reset_rows(self._rows, options or {})
        self.builder.update(self.loads[:, 0], self.core.active, self.core.warming, self.start_minute)
        self.last_obs = self.builder.observation()
        return self.last_obs.features, {}

    def step(self, actions):
        a = np.asarray(actions, dtype=np.int64)
        self.t += 1
        t0 = int(self.t[0])
        if (self.t == t0).all():  # fleets in lockstep (the usual case): one column, not a fancy index
            load = self.loads[:, t0].copy()
        else:
            load = self.loads[self._rows, self.t]
        out = self.core.step(a - self.d, load)
        warming = self.core.warming
        self.builder.update(out.load_tpm, out.active, warming, self.start_minute + self.t)
        truncated = self.t >= self.length
        terminated = np.zeros(self.num_envs, dtype=bool)
        info: dict[str, Any] = {"load_tpm": out.load_tpm, "active": out.active, "warming": warming, "down": out.down}
        if truncated.any():
            final = self.builder.observation().features
            done = np.nonzero(truncated)[0]
            self._reset_rows(done, {})
            self.builder.update(self.loads[:, 0], self.core.active, self.core.warming, self.start_minute)
            info["final_obs"] = final
            info["_final_obs"] = truncated.copy()
        self.last_obs = self.builder.observation()
        reward = expected_reward(out.active, out.load_tpm, self.params) if self.expected_reward else out.reward
        return self.last_obs.features, reward, terminated, truncated, info


def register_env() -> None:
    """Register `fleetpilot/WebFleet-v0` with gymnasium (once; done when this module is imported)."""
    from fleetpilot.training import ENV_ID

    if ENV_ID not in gym.registry:
        gym.register(
            id=ENV_ID,
            entry_point="fleetpilot.training.env:WebFleetEnv",
            vector_entry_point="fleetpilot.training.env:WebFleetVectorEnv",
            max_episode_steps=10_000,
        )


register_env()
