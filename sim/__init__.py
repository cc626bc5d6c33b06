"""The fleet and load simulator core (numpy only): parameters, the fleet model, synthetic loads and traces.

Shared by the training side (envs, backtest, oracle) and the daemon's simulated groups and replay sources, so
neither imports the other's stack: nothing here imports gymnasium or torch.
"""
