#!/usr/bin/env bash
# The checks CI runs before the tests: ruff (lint and format) and mypy, all clean. Needs the test set-up
# (scripts/setup.sh test).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
