"""Training side: fleet and load simulation, gymnasium envs, PPO, ONNX export, backtest, hindsight oracle.

Importing this package registers `fleetpilot/WebFleet-v0` (with a numpy vector entry point). torch is
imported only by `training.ppo` and `training.export`.
"""

import gymnasium as gym

ENV_ID = "fleetpilot/WebFleet-v0"

if ENV_ID not in gym.registry:
    gym.register(
        id=ENV_ID,
        entry_point="fleetpilot.training.env:WebFleetEnv",
        vector_entry_point="fleetpilot.training.env:WebFleetVectorEnv",
        max_episode_steps=10_000,
    )
