#!/usr/bin/env bash
# Sets up the daemon and runs it with the shipped policy against the built-in simulator (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh run
exec .venv/bin/fleetpilot run --config examples/simulator.yaml "$@"
