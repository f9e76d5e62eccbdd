#!/usr/bin/env bash
# Creates the TPU: a TPU VM for single-host types, a queued resource (which holds the slice's TPU VMs) for pod
# slices. With --wait, polls the queued resource until it is ACTIVE.
# shellcheck source=tpu_setup/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
Usage: tpu_setup/create.sh --zone ZONE --accelerator-type TYPE [--name NAME] [--spot | --reserved] [--wait]

Creates a TPU VM (single host, e.g. v5p-8) or a queued resource for a pod slice (e.g. v5p-128).
  --spot        Spot capacity (cheaper, can be preempted)
  --reserved    use the project's reservation
  --wait        poll a queued resource until it is ACTIVE (every 60 s)
EOF2
}

parse_common_flags "$@"
TIER=()
WAIT=0
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case $1 in
    --spot) TIER=(--spot); shift ;;
    --reserved) TIER=(--reserved); shift ;;
    --wait) WAIT=1; shift ;;
    *) reject_unknown "$@" ;;
  esac
done

require_zone
accelerator_info
location_flags
echo "# $ACCELERATOR: TPU $GENERATION, $CHIPS chips, runtime $RUNTIME_VERSION" >&2

if use_queued; then
  run gcloud compute tpus queued-resources create "$TPU_NAME" "${LOCATION[@]}" --node-id="$TPU_NAME" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME_VERSION" "${TIER[@]+"${TIER[@]}"}"
  if ((WAIT)); then
    while :; do
      state=$(run gcloud compute tpus queued-resources describe "$TPU_NAME" "${LOCATION[@]}" \
        --format='value(state.state)')
      if [[ $DRY_RUN == 1 ]]; then
        echo "$state"
        break
      fi
      echo "# queued resource $TPU_NAME: $state" >&2
      case $state in
        ACTIVE) break ;;
        FAILED|SUSPENDED) die "queued resource $TPU_NAME is $state; see the describe output, delete it and retry" ;;
      esac
      sleep 60
    done
  fi
else
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${LOCATION[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME_VERSION" "${TIER[@]+"${TIER[@]}"}"
fi
