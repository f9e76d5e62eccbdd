# Sourced by scripts/*.sh after setting EXTRAS (e.g. EXTRAS=test; empty for the bare package): creates .venv with
# Python >= 3.11 and installs the project into it (editable) at the versions pinned in scripts/constraints.txt
# (what the README's figures were measured with; `pip install huginn-jax` itself keeps version ranges).
# Reinstalls when pyproject.toml, the constraints or the extras change.
VENV=${HUGINN_VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed-${EXTRAS:-base}-$(cat pyproject.toml scripts/constraints.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q "pip==26.3"
  "$VENV/bin/python" -m pip install -q -c scripts/constraints.txt -e ".${EXTRAS:+[$EXTRAS]}"
  touch "$stamp"
fi
