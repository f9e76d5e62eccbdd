#!/usr/bin/env bash
# Streams the training log of a worker (worker 0 by default: the process that writes the metrics).
# shellcheck source=tpu_setup/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
Usage: tpu_setup/logs.sh --zone ZONE [--name NAME] [--worker N|all] [--lines N] [--no-follow]

  --worker N    which worker's log: an index, a list like 0,3, or all (default: 0)
  --lines N     start with the last N lines (default: 100)
  --no-follow   print and exit instead of following the log
EOF2
}

parse_common_flags "$@"
WORKER=0
LINES=100
FOLLOW="-F "
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case $1 in
    --worker) (($# >= 2)) || die "--worker needs a value"; WORKER=$2; shift 2 ;;
    --worker=*) WORKER=${1#*=}; shift ;;
    --lines) (($# >= 2)) || die "--lines needs a value"; LINES=$2; shift 2 ;;
    --lines=*) LINES=${1#*=}; shift ;;
    --no-follow) FOLLOW=; shift ;;
    *) reject_unknown "$@" ;;
  esac
done
[[ $WORKER =~ ^(all|[0-9]+([,-][0-9]+)*)$ ]] || die "--worker takes an index, a list like 0,3, a range 1-3 or all"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines takes a number, got '$LINES'"

require_zone
check_remote_paths
on_workers "$WORKER" "tail -n $LINES $FOLLOW\$HOME/$REMOTE_LOGS/train.log"
