#!/usr/bin/env bash
# Installs huginn-jax with its test extras into .venv (once), then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test source scripts/_venv.sh
exec "$VENV/bin/python" -m pytest -q "$@"
