#!/usr/bin/env bash
# Installs huginn-jax with its test extras into .venv (once), then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS='test' source scripts/_venv.sh
# Two pytest workers (each file on one worker, so module fixtures are built once): most tests are compile-bound
# and single-threaded, so two cores halve the wall time. TEST_WORKERS=0 runs in one process.
exec "$VENV/bin/python" -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
