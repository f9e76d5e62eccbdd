# shellcheck shell=bash
# Sourced by the tpu_setup scripts. Holds the settings (flags, with HUGINN_* environment variables as defaults),
# the table of TPU generations, and `run`, which prints a command instead of running it under --dry-run.
set -euo pipefail

PROJECT=${HUGINN_PROJECT:-}                  # empty: gcloud's configured project
ZONE=${HUGINN_ZONE:-}
TPU_NAME=${HUGINN_TPU_NAME:-huginn-jax}      # the TPU VM, and the queued resource that holds a pod slice
ACCELERATOR=${HUGINN_ACCELERATOR:-}          # v4-N, v5litepod-N (v5e), v5p-N, v6e-N
RUNTIME_VERSION=${HUGINN_RUNTIME_VERSION:-}  # empty: the recommended one for the generation
QUEUED=${HUGINN_QUEUED:-auto}                # auto: queued resources for multi-host slices, a plain TPU VM otherwise
DRY_RUN=${HUGINN_DRY_RUN:-0}
# Paths on the workers, relative to the home directory.
REMOTE_CODE=${HUGINN_REMOTE_CODE:-huginn-jax}
REMOTE_VENV=${HUGINN_REMOTE_VENV:-huginn-venv}
REMOTE_LOGS=${HUGINN_REMOTE_LOGS:-huginn-logs}

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ARGS=()  # what parse_common_flags leaves for the calling script

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# Prints its arguments as one shell line, quoting only where needed (what shlex.split reads back); a --flag=value
# keeps the flag outside the quotes.
quote_cmd() {
  local out=() arg
  for arg in "$@"; do
    out+=("$(quote_arg "$arg")")
  done
  echo "${out[*]}"
}

quote_arg() {
  local safe='^[A-Za-z0-9_./:=@%+,-]+$'
  if [[ $1 =~ $safe ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--[a-z0-9-]+=)(.*)$ ]]; then
    printf '%s%s' "${BASH_REMATCH[1]}" "$(quote_arg "${BASH_REMATCH[2]}")"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Runs a command, or with --dry-run prints it on stdout instead. Real runs echo it to stderr first.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "$@"
  else
    echo "+ $(quote_cmd "$@")" >&2
    "$@"
  fi
}

common_usage() {
  cat <<EOF
Common flags (environment variable in brackets):
  --project ID              GCP project [HUGINN_PROJECT]; default: gcloud's configured project
  --zone ZONE               TPU zone, e.g. us-central2-b [HUGINN_ZONE]; required
  --name NAME               TPU VM / queued resource name [HUGINN_TPU_NAME]; default: huginn-jax
  --accelerator-type TYPE   v4-N, v5litepod-N (v5e), v5p-N or v6e-N, e.g. v5p-128 [HUGINN_ACCELERATOR]
  --runtime-version V       TPU software version [HUGINN_RUNTIME_VERSION]; default: the generation's recommended
  --queued / --no-queued    use queued resources or a plain TPU VM [HUGINN_QUEUED=1|0]; default: queued for
                            multi-host slices
  --dry-run                 print the gcloud commands instead of running them [HUGINN_DRY_RUN=1]
  -h, --help                this help
EOF
}

# Consumes the common flags; everything else (and all after --) is left in ARGS, in order.
parse_common_flags() {
  while (($#)); do
    case $1 in
      --project|--zone|--name|--accelerator-type|--runtime-version)
        (($# >= 2)) || die "$1 needs a value"
        set_common "$1" "$2"
        shift 2
        ;;
      --project=*|--zone=*|--name=*|--accelerator-type=*|--runtime-version=*)
        set_common "${1%%=*}" "${1#*=}"
        shift
        ;;
      --queued) QUEUED=1; shift ;;
      --no-queued) QUEUED=0; shift ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h|--help) usage; echo; common_usage; exit 0 ;;
      --) ARGS+=("$@"); break ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
}

set_common() {
  case $1 in
    --project) PROJECT=$2 ;;
    --zone) ZONE=$2 ;;
    --name) TPU_NAME=$2 ;;
    --accelerator-type) ACCELERATOR=$2 ;;
    --runtime-version) RUNTIME_VERSION=$2 ;;
  esac
}

# Fails on flags the script does not know (what is left in ARGS before any --).
reject_unknown() {
  (($# == 0)) || [[ $1 == -- ]] || die "unknown argument '$1'; see --help"
}

require_zone() {
  [[ -n $ZONE ]] || die "no zone: pass --zone ZONE or set HUGINN_ZONE (TPU zones per generation are listed at \
https://cloud.google.com/tpu/docs/regions-zones)"
  [[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || die "--name '$TPU_NAME' is not a valid TPU name: lowercase letters, digits and hyphens, starting with a letter"
}

# Sets GENERATION, CHIPS, SINGLE_HOST and (unless given) RUNTIME_VERSION from ACCELERATOR.
# v4 and v5p types count TensorCores (2 per chip); v5e and v6e types count chips.
# shellcheck disable=SC2034  # GENERATION and CHIPS are read by the calling scripts
accelerator_info() {
  [[ -n $ACCELERATOR ]] || die "no accelerator type: pass --accelerator-type (e.g. v5p-128) or set HUGINN_ACCELERATOR"
  local count max_host_chips default_version
  if [[ $ACCELERATOR =~ ^v4-([0-9]+)$ ]]; then
    GENERATION=v4; count=${BASH_REMATCH[1]}; CHIPS=$((count / 2)); max_host_chips=4
    default_version=tpu-ubuntu2204-base
  elif [[ $ACCELERATOR =~ ^v5litepod-([0-9]+)$ ]]; then
    GENERATION=v5e; count=${BASH_REMATCH[1]}; CHIPS=$count; max_host_chips=8
    default_version=v2-alpha-tpuv5-lite
  elif [[ $ACCELERATOR =~ ^v5p-([0-9]+)$ ]]; then
    GENERATION=v5p; count=${BASH_REMATCH[1]}; CHIPS=$((count / 2)); max_host_chips=4
    default_version=v2-alpha-tpuv5
  elif [[ $ACCELERATOR =~ ^v6e-([0-9]+)$ ]]; then
    GENERATION=v6e; count=${BASH_REMATCH[1]}; CHIPS=$count; max_host_chips=8
    default_version=v2-alpha-tpuv6e
  else
    die "unknown --accelerator-type '$ACCELERATOR': use v4-N, v5litepod-N (v5e), v5p-N or v6e-N, e.g. v5p-128"
  fi
  ((CHIPS >= 1)) || die "--accelerator-type '$ACCELERATOR' has no chips"
  SINGLE_HOST=$((CHIPS <= max_host_chips))
  RUNTIME_VERSION=${RUNTIME_VERSION:-$default_version}
}

# Whether the TPU is (to be) held by a queued resource: --queued/--no-queued, else multi-host slices are.
use_queued() {
  case $QUEUED in
    1|true|yes) return 0 ;;
    0|false|no) return 1 ;;
    auto) accelerator_info; ((SINGLE_HOST == 0)) ;;
    *) die "HUGINN_QUEUED must be 1, 0 or auto, got '$QUEUED'" ;;
  esac
}

# gcloud flags naming where the TPU lives.
location_flags() {
  LOCATION=(--zone="$ZONE")
  if [[ -n $PROJECT ]]; then
    LOCATION+=(--project="$PROJECT")
  fi
}

# Runs a shell command on the given workers ("all", an index, or a list like 0,2) at the same time.
on_workers() {
  local workers=$1 command=$2
  location_flags
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION[@]}" --worker="$workers" --command="$command"
}

# Packs the working tree (without git data, virtual environments and outputs), copies it to every worker and
# unpacks it into ~/$REMOTE_CODE, replacing what was there.
copy_code() {
  local tarball=${TMPDIR:-/tmp}/huginn-jax-$TPU_NAME.tar.gz
  location_flags
  run tar -czf "$tarball" --exclude=.git --exclude=.venv --exclude=outputs --exclude=__pycache__ \
    --exclude='*.egg-info' --exclude=.pytest_cache -C "$REPO_ROOT" .
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:huginn-jax.tar.gz" "${LOCATION[@]}" --worker=all
  local code="\$HOME/$REMOTE_CODE"
  on_workers all "rm -rf $code && mkdir -p $code && tar -xzf \$HOME/huginn-jax.tar.gz -C $code"
}

check_remote_paths() {
  local path
  for path in "$REMOTE_CODE" "$REMOTE_VENV" "$REMOTE_LOGS"; do
    [[ $path =~ ^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$ ]] \
      || die "remote path '$path' must be a plain relative path (letters, digits, . _ - and /)"
  done
}
