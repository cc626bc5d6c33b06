#!/usr/bin/env bash
# Creates .venv and installs fleetpilot into it. Usage: scripts/setup.sh [run|test]
#   run  : the daemon only (no torch)
#   test : everything the test suite needs: torch (CPU wheel, pinned first so no CUDA build is pulled),
#          the train and dev extras, and Debian's prometheus server and chromium for the integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
py=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$py" -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [[ $mode == test ]]; then
  if ! command -v prometheus >/dev/null 2>&1 || ! command -v systemd-analyze >/dev/null 2>&1 \
    || ! command -v chromium >/dev/null 2>&1; then
    sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    # chromium: the status page's browser test (tests/browser.py)
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus systemd chromium >/dev/null
  fi
  "${pip[@]}" torch==2.13.0
  "${pip[@]}" -e '.[train,dev]'
else
  "${pip[@]}" -e .
fi
