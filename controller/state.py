"""Where the daemon keeps its state (the decision journal) when the config does not say.

Resolution, first match wins (`fleetpilot run`, `config check` and `decisions` all use it):

1. the config's `journal_path` (in the file, or `FLEETPILOT_JOURNAL_PATH`); a relative path is resolved
   against the config file's directory (controller.config.load_config);
2. `$STATE_DIRECTORY/journal.sqlite`: systemd sets STATE_DIRECTORY for a unit with `StateDirectory=fleetpilot`
   (`/var/lib/fleetpilot`; the first entry when it lists several); the container image sets it too;
3. `$XDG_STATE_HOME/fleetpilot/journal.sqlite` (the XDG Base Directory spec; a relative value is ignored, as
   the spec says);
4. `~/.local/state/fleetpilot/journal.sqlite`.

Never inside the checkout: a demo run from a clone writes to the user's state directory.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from pathlib import Path

from fleetpilot.policies.errors import UserError

APP_DIR = "fleetpilot"
JOURNAL_FILE = "journal.sqlite"


class StateDirError(UserError):
    """No state directory can be found (no HOME, no XDG_STATE_HOME, no STATE_DIRECTORY): one line, exit 2."""


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """The directory for fleetpilot's state by the order in the module docstring (steps 2 to 4)."""
    env = os.environ if env is None else env
    systemd = env.get("STATE_DIRECTORY", "")
    first = systemd.split(":", 1)[0].strip()
    if first and os.path.isabs(first):
        return Path(first)
    xdg = env.get("XDG_STATE_HOME", "").strip()
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / APP_DIR
    home = env.get("HOME", "").strip()
    if not home:
        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:  # no HOME and no passwd entry (an arbitrary container UID)
            home = ""
    if not home or not os.path.isabs(home):
        raise StateDirError(
            "no state directory for the journal: set journal_path in the config, "
            "or STATE_DIRECTORY or XDG_STATE_HOME in the environment"
        )
    return Path(home) / ".local" / "state" / APP_DIR


def default_journal_path(env: Mapping[str, str] | None = None) -> Path:
    """The journal's path when the config has no `journal_path`."""
    return state_dir(env) / JOURNAL_FILE
