#!/usr/bin/env bash
# The main job: installs huginn-jax into .venv (once), converts the golden tiny checkpoint (saved by the original
# PyTorch code) to Orbax, and runs it at several recurrence counts.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
"$VENV/bin/huginn-jax" convert tests/data/tiny outputs/tiny-orbax --overwrite
"$VENV/bin/huginn-jax" forward outputs/tiny-orbax --steps 0 1 2 4 8 16 32 64
