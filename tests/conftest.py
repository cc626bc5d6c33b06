pytest_plugins = ["tests.real_servers"]
