# shellcheck shell=bash
# Sourced by scripts/*.sh after setting EXTRAS (e.g. EXTRAS=test; empty for the bare package): creates .venv with
# Python >= 3.11 and installs the project into it (editable) at the versions pinned in scripts/constraints.txt
# (what the README's figures were measured with; `pip install huginn-jax` itself keeps version ranges).
# Reinstalls when pyproject.toml, the constraints or the extras change. Installs with uv (pinned here; about 30 s
# faster than pip on a fresh machine) and falls back to pip where uv cannot be installed or cannot reach an index.
# Last, turns on huge pages for large host buffers in the processes the scripts start (scripts/_hugepages.sh).
VENV=${HUGINN_VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed-${EXTRAS:-base}-$(cat pyproject.toml scripts/constraints.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q "pip==26.3"
  target=".${EXTRAS:+[$EXTRAS]}"
  if ! { "$VENV/bin/python" -m pip install -q "uv==0.13.8" &&
         "$VENV/bin/python" -m uv pip install -q --python "$VENV/bin/python" -c scripts/constraints.txt -e "$target"; }; then
    echo "_venv.sh: uv failed (above); installing with pip instead" >&2
    "$VENV/bin/python" -m pip install -q -c scripts/constraints.txt -e "$target"
  fi
  touch "$stamp"
fi
# shellcheck source=scripts/_hugepages.sh
source scripts/_hugepages.sh
