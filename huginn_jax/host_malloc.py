"""Whether large host buffers get huge pages in this process, said in one line for logs and benchmark headers.

Why it matters: XLA CPU allocates every call's temporaries and outputs afresh (hundreds of MiB for a train step or a
loss and its gradients) and frees them after the call. Above glibc's 32 MiB mmap ceiling each such buffer is a new
mapping, so with 4 KiB pages every call page-faults all of it again: ~100,000 faults and ~250 ms of kernel time per
loss + gradient call of the issue-15 shape on a 2-core EPYC (benchmarks/README.md). Where the kernel's transparent
huge pages are in ``madvise`` mode, starting Python with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35)
has glibc ask for them on those mappings; in ``always`` mode they come without it. The variable is read when the
process starts, so this module can only report it; the README's scripts set it.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Mapping
from typing import Any

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MEMINFO_FILE = "/proc/meminfo"
MIN_GLIBC = (2, 35)  # the first glibc with the hugetlb tunable
ADVICE = (f"start Python with GLIBC_TUNABLES=${{GLIBC_TUNABLES:+$GLIBC_TUNABLES:}}{TUNABLE}=1 "
          "(scripts/main.sh and scripts/test.sh add it unless the tunable is already set)")


def tunable_value(env: Mapping[str, str] = os.environ) -> int | None:
  """glibc.malloc.hugetlb as glibc reads ``GLIBC_TUNABLES`` (colon-separated name=value pairs, the last one wins,
  numbers in C notation), None if absent or not a number. ``env``: the environment the process started with (by
  default ``os.environ``; a change to it after start reaches neither glibc nor the truth of this answer)."""
  value = None
  for item in env.get("GLIBC_TUNABLES", "").split(":"):
    name, _, text = item.partition("=")
    if name == TUNABLE:
      try:
        value = int(text, 8) if re.fullmatch(r"0[0-7]+", text) else int(text, 0)
      except ValueError:
        value = None
  return value


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page mode (always, madvise or never), None where the file is absent."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  match = re.search(r"\[(\w+)\]", text)
  return match.group(1) if match else None


def reserved_huge_pages(path: str = MEMINFO_FILE) -> int:
  """HugePages_Total of /proc/meminfo: the hugetlbfs pages reserved for MAP_HUGETLB (0 where unknown)."""
  try:
    with open(path) as f:
      match = re.search(r"^HugePages_Total:\s+(\d+)", f.read(), re.MULTILINE)
  except OSError:
    return 0
  return int(match.group(1)) if match else 0


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library this Python runs on if it is glibc, else None."""
  if not sys.platform.startswith("linux"):
    return None
  lib, version = platform.libc_ver()
  match = re.match(r"(\d+)\.(\d+)", version)
  return (int(match.group(1)), int(match.group(2))) if lib == "glibc" and match else None


_DETECT = object()  # describe()'s default: read the machine


def describe(env: Mapping[str, str] = os.environ, mode: Any = _DETECT, version: Any = _DETECT,
             reserved: Any = _DETECT) -> str:
  """One line: whether large host buffers get huge pages in this process, and how to get them where they do not.
  ``mode``, ``version`` and ``reserved`` (of thp_mode, glibc_version, reserved_huge_pages) are read from the machine
  unless given."""
  mode = thp_mode() if mode is _DETECT else mode
  version = glibc_version() if version is _DETECT else version
  if version is None:
    return "host malloc: not glibc on Linux (the huge-page setting does not apply)"
  value = tunable_value(env) if version >= MIN_GLIBC else None
  if value is not None and value >= 2:  # MAP_HUGETLB from the reserved hugetlbfs pool, whatever the THP mode
    reserved = reserved_huge_pages() if reserved is _DETECT else reserved
    if reserved:
      return f"host malloc: reserved hugetlbfs pages for large buffers ({TUNABLE}={value}, {reserved} reserved)"
    return (f"host malloc: 4 KiB pages ({TUNABLE}={value} asks for reserved hugetlbfs pages and none are reserved; "
            f"{TUNABLE}=1 uses transparent huge pages)")
  if mode == "always":
    return "host malloc: huge pages for large buffers (kernel THP always; the glibc tunable is not needed)"
  if mode != "madvise":
    return f"host malloc: 4 KiB pages (the kernel offers no transparent huge pages: THP {mode or 'absent'})"
  if version < MIN_GLIBC:
    return f"host malloc: 4 KiB pages (glibc {version[0]}.{version[1]} has no {TUNABLE}; it needs 2.35)"
  if value == 1:
    return f"host malloc: huge pages for large buffers ({TUNABLE}=1, kernel THP madvise)"
  return (f"host malloc: 4 KiB pages, so XLA's per-call buffers are page-faulted on every call; for faster CPU "
          f"steps {ADVICE}")
