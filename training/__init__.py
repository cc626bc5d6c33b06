"""Training side: gymnasium envs, PPO, ONNX export, backtest, hindsight oracle (the simulator core is
`fleetpilot.sim`).

Importing this package imports nothing: the daemon's command line adds the training subcommands without loading
gymnasium. `fleetpilot.training.env` registers `fleetpilot/WebFleet-v0` (with a numpy vector entry point) when
it is imported; `gymnasium.make("fleetpilot.training.env:fleetpilot/WebFleet-v0")` imports it on demand. torch is
imported only by `training.ppo` and `training.export`.
"""

ENV_ID = "fleetpilot/WebFleet-v0"
