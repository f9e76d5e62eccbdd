#!/usr/bin/env bash
# Installs huginn-jax on every worker: copies the working tree, makes a Python 3.11 virtual environment with uv
# (the TPU images ship Python 3.10), installs jax with its TPU runtime (libtpu), gcsfs (gs:// paths for Orbax and
# grain) and the project, then checks that jax sees the whole slice.
# shellcheck source=tpu_setup/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
Usage: tpu_setup/install.sh --zone ZONE [--name NAME] [--jax-version X.Y.Z] [--python 3.11] [--no-copy]

Runs on all workers at once (gcloud --worker=all).
  --jax-version V   pin jax[tpu]==V (default: the newest release)
  --python V        Python version of the worker environment (default: 3.11)
  --no-copy         install the code already on the workers instead of copying this working tree
EOF2
}

parse_common_flags "$@"
JAX_SPEC="jax[tpu]"
PYTHON_VERSION=3.11
COPY=1
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case $1 in
    --jax-version) (($# >= 2)) || die "--jax-version needs a value"; JAX_SPEC="jax[tpu]==$2"; shift 2 ;;
    --jax-version=*) JAX_SPEC="jax[tpu]==${1#*=}"; shift ;;
    --python) (($# >= 2)) || die "--python needs a value"; PYTHON_VERSION=$2; shift 2 ;;
    --python=*) PYTHON_VERSION=${1#*=}; shift ;;
    --no-copy) COPY=0; shift ;;
    *) reject_unknown "$@" ;;
  esac
done
[[ $JAX_SPEC =~ ^jax\[tpu\](==[0-9][0-9a-z.]*)?$ ]] || die "--jax-version must look like 0.7.2, got '${JAX_SPEC#*==}'"
[[ $PYTHON_VERSION =~ ^3\.[0-9]+$ ]] || die "--python must look like 3.11, got '$PYTHON_VERSION'"

require_zone
check_remote_paths
if ((COPY)); then
  copy_code
fi
# One line per step, joined with &&, so the first failure stops that worker with its message.
uv="\$HOME/.local/bin/uv"
venv="\$HOME/$REMOTE_VENV"
steps=(
  "python3 -m pip install --user --quiet --upgrade uv"
  "$uv venv --quiet --allow-existing --python $PYTHON_VERSION $venv"
  "$uv pip install --quiet --python $venv/bin/python --upgrade '$JAX_SPEC' gcsfs"
  "$uv pip install --quiet --python $venv/bin/python --editable \$HOME/$REMOTE_CODE"
  "$venv/bin/python -c 'import jax; print(\"worker\", jax.process_index(), \"of\", jax.process_count(), \"sees\", \
jax.device_count(), \"TPU devices\")'"
)
command=$(printf ' && %s' "${steps[@]}")
on_workers all "${command# && }"
