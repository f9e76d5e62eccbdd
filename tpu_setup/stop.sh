#!/usr/bin/env bash
# Stops the run that launch.sh started, on every worker: SIGTERM to the pid it recorded (the run saves a checkpoint
# at its next step boundary and exits; rerunning launch.sh continues it), SIGKILL after 60 s, so
# that the TPU chips are free for the next run (an exited process left unreaped counts as stopped).
# shellcheck source=tpu_setup/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
Usage: tpu_setup/stop.sh --zone ZONE [--name NAME]
EOF2
}

parse_common_flags "$@"
reject_unknown "${ARGS[@]+"${ARGS[@]}"}"
require_zone
check_remote_paths
pid_file="\$HOME/$REMOTE_LOGS/train.pid"
on_workers all "if [ -f $pid_file ]; then pid=\$(cat $pid_file); kill \$pid 2>/dev/null || true; \
for _ in \$(seq 60); do kill -0 \$pid 2>/dev/null || break; case \$(ps -o stat= -p \$pid) in Z*) break ;; esac; \
sleep 1; done; kill -9 \$pid 2>/dev/null || true; \
rm -f $pid_file; echo \"\$(hostname): stopped pid \$pid\"; else echo \"\$(hostname): no run\"; fi"
