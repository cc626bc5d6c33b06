import os

import pytest

pytest_plugins = ["tests.real_servers"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_state_dir(tmp_path_factory):
    """A config without journal_path writes to the state directory (controller.state): in tests that is a
    temporary XDG_STATE_HOME, never the user's ~/.local/state nor a systemd STATE_DIRECTORY (session-wide, so
    hypothesis tests see no function-scoped fixture)."""
    saved = {k: os.environ.get(k) for k in ("STATE_DIRECTORY", "XDG_STATE_HOME")}
    os.environ.pop("STATE_DIRECTORY", None)
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _fresh_aws_clients():
    """boto3 clients are shared per process (controller.aws_session): each test leaves none behind, so an event
    handler one test registers on a client never reaches another test's."""
    import sys

    yield
    session = sys.modules.get("fleetpilot.controller.aws_session")
    if session is not None:
        session.forget_clients()
