# shellcheck shell=bash
# Sourced by scripts/_venv.sh: XLA CPU allocates each call's large buffers afresh and, with 4 KiB pages, page-faults
# them again on every call (the main job's training: 390 s with them, 309 s with huge pages, on 2 cores). Where the
# kernel's transparent huge pages are in madvise mode, glibc >= 2.35 asks for them under this tunable (read when a
# process starts; ignored by older glibc and elsewhere). A glibc.malloc.hugetlb the caller set is kept.
# See huginn_jax/host_malloc.py.
case ":${GLIBC_TUNABLES:-}" in
  *:glibc.malloc.hugetlb=*) ;;
  *) export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1" ;;
esac
