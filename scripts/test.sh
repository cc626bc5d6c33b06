#!/usr/bin/env bash
# Sets up everything the tests need (see setup.sh) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
bash scripts/lint.sh
set +e
# `pytest`, not `python -m pytest`: the latter puts the checkout on sys.path, the tests must see the installed package
.venv/bin/pytest -q "$@"
rc=$?
set -e
if [[ $rc == 5 ]]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
