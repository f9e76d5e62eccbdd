# Sourced by scripts/*.sh: creates .venv with Python >= 3.11 and installs the project into it (editable) at the
# versions pinned in scripts/constraints.txt (what the README's figures were measured with; `pip install huginn-jax`
# itself keeps version ranges). Reinstalls when pyproject.toml or the constraints change.
VENV=${HUGINN_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml scripts/constraints.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade "pip==26.3"
  "$VENV/bin/python" -m pip install -q -c scripts/constraints.txt -e ".[test]"
  touch "$stamp"
fi
