#!/usr/bin/env bash
# Starts `huginn-jax train` on every worker at once (jax.distributed finds its peers on Cloud TPU by itself):
# copies the working tree, then runs the trainer under nohup with its output in ~/huginn-logs/train.log and its
# pid in ~/huginn-logs/train.pid. Checkpoint and data paths may be gs:// URLs (Orbax and grain read and write them
# through tensorstore and fsspec/gcsfs, which install.sh installs).
# shellcheck source=tpu_setup/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
Usage: tpu_setup/launch.sh --zone ZONE [--name NAME] --config CONFIG [--env KEY=VALUE ...] [--no-copy]
                           [-- TRAIN_ARGS ...]

Runs on all workers: cd ~/$REMOTE_CODE && nohup huginn-jax train --config CONFIG TRAIN_ARGS > ~/$REMOTE_LOGS/train.log
  --config PATH     the training config (a path inside the repository, or a preset name)
  --env KEY=VALUE   environment variable for the trainer (repeatable), e.g. --env LIBTPU_INIT_ARGS=...
  --no-copy         run the code already on the workers
Refuses to start where a previous run is still going; tpu_setup/stop.sh ends it.
EOF2
}

parse_common_flags "$@"
CONFIG=
COPY=1
ENVS=()
TRAIN_ARGS=()
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case $1 in
    --config) (($# >= 2)) || die "--config needs a value"; CONFIG=$2; shift 2 ;;
    --config=*) CONFIG=${1#*=}; shift ;;
    --env) (($# >= 2)) || die "--env needs KEY=VALUE"; ENVS+=("$2"); shift 2 ;;
    --env=*) ENVS+=("${1#*=}"); shift ;;
    --no-copy) COPY=0; shift ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) reject_unknown "$@" ;;
  esac
done
[[ -n $CONFIG ]] || die "no training config: pass --config PATH"
for pair in "${ENVS[@]+"${ENVS[@]}"}"; do
  [[ $pair =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env takes KEY=VALUE, got '$pair'"
done

require_zone
check_remote_paths
if ((COPY)); then
  copy_code
fi

logs="\$HOME/$REMOTE_LOGS"
pid_file="$logs/train.pid"
trainer=$(quote_cmd env "${ENVS[@]+"${ENVS[@]}"}" "\$HOME/$REMOTE_VENV/bin/huginn-jax" train --config "$CONFIG" \
  "${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}")
trainer=${trainer/"'\$HOME/$REMOTE_VENV/bin/huginn-jax'"/"\$HOME/$REMOTE_VENV/bin/huginn-jax"}  # let $HOME expand
remote="set -e; mkdir -p $logs; cd \$HOME/$REMOTE_CODE; \
if [ -f $pid_file ] && kill -0 \"\$(cat $pid_file)\" 2>/dev/null; then \
echo \"\$(hostname): a run is still going (pid \$(cat $pid_file)); tpu_setup/stop.sh ends it\" >&2; exit 1; fi; \
nohup $trainer > $logs/train.log 2>&1 < /dev/null & echo \$! > $pid_file; \
echo \"\$(hostname): started pid \$(cat $pid_file), log $logs/train.log\""
on_workers all "$remote"
