"""One writer per workdir: an exclusive ``fcntl.flock`` on ``workdir/train.lock`` held for the whole run.

The kernel drops a flock when its process exits, however it exits (SIGKILL and power loss included), so a crashed
run never leaves the workdir locked; the pid, host and start time written into the file only serve the refusal
message. On several hosts each process locks its own file (``train.lock.p<i>``), so two runs of the same pod size on
one workdir still collide on every host. flock works on local disks and NFSv4; on file systems without locks (some
FUSE mounts) the lock cannot protect the workdir.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from huginn_jax.training.errors import WorkdirLocked


def lock_path(workdir: str, process_index: int = 0, process_count: int = 1) -> str:
  name = "train.lock" if process_count == 1 else f"train.lock.p{process_index}"
  return os.path.join(workdir, name)


class WorkdirLock:
  """``with WorkdirLock(workdir):`` holds the workdir or raises ``WorkdirLocked`` naming the run that holds it;
  ``flag`` is the command-line option that chooses another directory (named in the refusal)."""

  def __init__(self, workdir: str, process_index: int = 0, process_count: int = 1, *, flag: str = "--workdir"):
    self.path = lock_path(os.path.abspath(workdir), process_index, process_count)
    self.flag = flag
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    holder = _wait_for_lock_or_holder(fd)
    if holder is not None:
      os.close(fd)
      raise WorkdirLocked(f"{os.path.dirname(self.path)} is in use by another training run ({holder}); wait for it "
                          f"to finish or stop it, or pass another {self.flag}.")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # the file stays (removing it would race a run that is opening it); empty = free
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _try_lock(fd: int) -> bool:
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except OSError:
    return False


def _wait_for_lock_or_holder(fd: int, wait_s: float = 0.5) -> str | None:
  """None once ``fd`` holds the lock; else the holder's record for the refusal. An empty record means the holder is
  between taking the lock and writing its pid, or between emptying the file and releasing the lock: for up to
  ``wait_s`` both the lock and the record are tried again, so neither case is refused as "pid unknown"."""
  deadline = time.monotonic() + wait_s
  while not _try_lock(fd):
    try:
      record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):  # a record caught half-written reads as none; the next read gets it whole
      record = {}
    if record:
      return f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}"
    if time.monotonic() >= deadline:
      return "pid unknown: it holds the lock but has written no pid"
    time.sleep(0.02)
  return None
