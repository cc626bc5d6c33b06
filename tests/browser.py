"""A real headless browser for the status page tests: Debian's `chromium`, run once per page.

`render(url)` loads a page, runs its scripts, and returns the DOM after them, the browser's console messages
(errors, warnings, CSP violations: any message is a finding) and, with `screenshot=`, a PNG of the page.
Missing chromium FAILS (not skips) with the install command, as the Prometheus server does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM_INSTALL_HINT = "sudo apt-get install -y chromium (scripts/setup.sh test does it)"


def chromium_bin() -> str:
    for c in (os.environ.get("FLEETPILOT_CHROMIUM_BIN"), shutil.which("chromium"), "/usr/bin/chromium"):
        if c and Path(c).is_file():
            return c
    pytest.fail(f"the chromium browser is missing: `{CHROMIUM_INSTALL_HINT}`, or set FLEETPILOT_CHROMIUM_BIN")


@dataclass
class Rendered:
    dom: str
    console: list[str]
    stderr: str


def _run(url: str, extra: list[str], timeout: float = 60.0) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="fp-chromium-") as profile:
        cmd = [
            chromium_bin(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *extra,
            url,
        ]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, f"chromium failed (exit {p.returncode}): {p.stderr[-2000:]}"
        return p.stdout, p.stderr


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def render(url: str, screenshot: Path | None = None, window: str = "1280,1600", settle_ms: int = 0) -> Rendered:
    """`settle_ms`: let that much (virtual) time pass after the load before the DOM is taken (callbacks run)."""
    settle = [f"--virtual-time-budget={settle_ms}"] if settle_ms else []
    dom, err = _run(url, ["--dump-dom", f"--window-size={window}", *settle])
    console = console_messages(err)
    if screenshot is not None:
        _, err2 = _run(url, [f"--screenshot={screenshot}", f"--window-size={window}", "--hide-scrollbars"])
        console += console_messages(err2)
        err += err2
    return Rendered(dom, console, err)
