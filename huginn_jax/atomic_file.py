"""Files that appear whole or not at all: written to a temporary name beside the target, renamed into place.

A run killed while writing leaves the earlier file (if any) untouched and no partial file behind; readers never see
half a file. Directories have their twin in ``checkpoint.io.atomic_dir``.
"""

from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
  """``with atomic_file(path) as f:`` writes ``f``; ``path`` is replaced (flushed and fsynced first) only if the block
  finishes without error, and the temporary file is removed either way."""
  path = os.fspath(path)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
