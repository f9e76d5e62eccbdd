#!/usr/bin/env bash
# The main job: installs huginn-jax into .venv (once), then trains a small depth-recurrent Huginn and a
# non-recurrent baseline on chained parity with the real training stack and shows accuracy rising with test-time
# iterations, five seeds of each (table on stdout; results.json, scaling.png, adaptive.png in outputs/main).
# About 6 minutes on 2 CPU cores, install included (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS='' source scripts/_venv.sh
"$VENV/bin/python" experiments/test_time_scaling.py --out "${1:-outputs/main}"
