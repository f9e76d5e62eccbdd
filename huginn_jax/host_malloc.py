"""Whether glibc backs large host buffers with transparent huge pages, said in one line for logs and benchmarks.

Why it matters: XLA CPU allocates every call's temporaries and outputs afresh (hundreds of MiB for a train step or a
loss and its gradients) and frees them after the call. Above glibc's 32 MiB mmap ceiling each such buffer is a new
mapping, so with 4 KiB pages every call page-faults all of it again: ~100,000 faults per loss + gradient call of
the issue-15 shape, 15-25% of its time on a 2-core EPYC (benchmarks/README.md). Started with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35), glibc asks the kernel for transparent huge pages for
those mappings: 512x fewer faults. The variable is read when the process starts, so this module can only report it;
the README's scripts set it.
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
MIN_GLIBC = (2, 35)  # the first glibc with the hugetlb tunable
ADVICE = f"export GLIBC_TUNABLES={TUNABLE}=1 before starting Python (scripts/main.sh and scripts/test.sh do)"


def tunable_value(env: Mapping[str, str] = os.environ) -> str | None:
  """The value of glibc.malloc.hugetlb in ``GLIBC_TUNABLES`` (colon-separated name=value pairs), None if unset."""
  for item in env.get("GLIBC_TUNABLES", "").split(":"):
    name, _, value = item.partition("=")
    if name.strip() == TUNABLE:
      return value.strip()
  return None


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page mode (always, madvise or never), None where the file is absent."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  match = re.search(r"\[(\w+)\]", text)
  return match.group(1) if match else None


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library this Python runs on if it is glibc, else None."""
  if not sys.platform.startswith("linux"):
    return None
  lib, version = platform.libc_ver()
  match = re.match(r"(\d+)\.(\d+)", version)
  return (int(match.group(1)), int(match.group(2))) if lib == "glibc" and match else None


_DETECT = object()  # describe()'s default: read the machine


def describe(env: Mapping[str, str] = os.environ, mode: Any = _DETECT, version: Any = _DETECT) -> str:
  """One line: whether large host buffers get huge pages in this process, and how to get them where they do not.
  ``mode`` and ``version`` (of thp_mode and glibc_version) are read from the machine unless given."""
  mode = thp_mode() if mode is _DETECT else mode
  version = glibc_version() if version is _DETECT else version
  if version is None:
    return "host malloc: not glibc on Linux (the huge-page setting does not apply)"
  if mode == "never":
    return "host malloc: 4 KiB pages (the kernel's transparent huge pages are off: never)"
  value = tunable_value(env)
  if version < MIN_GLIBC:
    return f"host malloc: 4 KiB pages (glibc {version[0]}.{version[1]} has no {TUNABLE}; it needs 2.35)"
  if value in ("1", "2"):
    return f"host malloc: huge pages for large buffers ({TUNABLE}={value}, kernel THP {mode or 'unknown'})"
  return (f"host malloc: 4 KiB pages, so XLA's per-call buffers are page-faulted on every call; for faster CPU "
          f"steps {ADVICE}")
