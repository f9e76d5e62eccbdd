#!/usr/bin/env bash
# Deletes the TPU: the queued resource together with its TPU VMs (--force), or the single TPU VM.
# shellcheck source=tpu_setup/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
Usage: tpu_setup/delete.sh --zone ZONE --accelerator-type TYPE [--name NAME] [--async]

Deletes what create.sh made, without asking (--quiet). Pass the same --accelerator-type (or --queued /
--no-queued) as to create.sh so the right kind of resource is deleted.
  --async       return without waiting for the deletion to finish
EOF2
}

parse_common_flags "$@"
ASYNC=()
set -- "${ARGS[@]+"${ARGS[@]}"}"
while (($#)); do
  case $1 in
    --async) ASYNC=(--async); shift ;;
    *) reject_unknown "$@" ;;
  esac
done

require_zone
location_flags
if use_queued; then
  run gcloud compute tpus queued-resources delete "$TPU_NAME" "${LOCATION[@]}" --force --quiet \
    "${ASYNC[@]+"${ASYNC[@]}"}"
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${LOCATION[@]}" --quiet "${ASYNC[@]+"${ASYNC[@]}"}"
fi
