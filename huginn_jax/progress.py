"""Progress of long work, readable on a terminal and in a log file alike.

On a terminal: a tqdm bar. When stderr is a file or a pipe (a job's log), a bar's redraws would fill it with
carriage returns, so instead a plain line every ``log_every_s`` seconds and one when the work ends (``log_every_s
= None``: nothing, for callers that print their own periodic lines, like the training loop). Disabled, or tqdm
missing on a terminal: silent. Every long loop of the package (loading, exporting, tokenizing, training, lm-eval
batches) goes through ``progress``.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, TextIO

LOG_EVERY_S = 30.0  # seconds between two progress lines in a log file


class _Silent:
  """The no-op progress: iterates, counts nothing, prints only what is written to it."""

  def __init__(self, iterable: Iterable | None, stream: TextIO):
    self._iterable = iterable
    self._stream = stream

  def __iter__(self):
    return iter(self._iterable)

  def update(self, n: int = 1) -> None:
    pass

  def set_postfix_str(self, text: str) -> None:
    pass

  def write(self, text: str) -> None:
    print(text, file=self._stream, flush=True)

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class _LogLines(_Silent):
  """Whole lines, at most one per ``every_s`` seconds, then a last one: ``desc: 38/75 tensor (51%), 1.2 s, ...``."""

  def __init__(self, iterable, stream, *, total: int | None, desc: str, unit: str, initial: int, every_s: float):
    super().__init__(iterable, stream)
    self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
    self.initial = self.count = initial
    self.start = self.last_line = time.monotonic()
    self.postfix = ""
    self.closed = False

  def __iter__(self):
    try:
      for item in self._iterable:
        yield item
        self.update(1)
    finally:
      self.close()

  def update(self, n: int = 1) -> None:
    self.count += n
    now = time.monotonic()
    if now - self.last_line >= self.every_s:
      self.last_line = now
      self._line(now)

  def set_postfix_str(self, text: str) -> None:
    self.postfix = text

  def close(self) -> None:
    if not self.closed:
      self.closed = True
      self._line(time.monotonic(), final=True)

  def _line(self, now: float, final: bool = False) -> None:
    elapsed = now - self.start
    done = f"{self.count:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"
    if self.total:
      done += f" ({self.count / self.total:.0%})"
    rate = (self.count - self.initial) / elapsed if elapsed > 0 else 0.0
    parts = [done, f"{elapsed:.1f} s", f"{rate:,.1f} {self.unit}/s"]
    if self.postfix:
      parts.append(self.postfix)
    self.write(f"{self.desc}: " + ", ".join(parts) + (" (done)" if final else ""))


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "it",
             initial: int = 0, enabled: bool = True, log_every_s: float | None = LOG_EVERY_S,
             leave: bool = True, stream: TextIO | None = None):
  """A progress object over ``iterable`` (iterate it) or, without one, over ``total`` units (call ``update``);
  both also have ``write``, ``set_postfix_str`` and ``close``, and work as a context manager."""
  stream = stream if stream is not None else sys.stderr
  if total is None and iterable is not None and hasattr(iterable, "__len__"):
    total = len(iterable)
  if not enabled:
    return _Silent(iterable, stream)
  if stream.isatty():
    try:
      from tqdm.auto import tqdm
    except ImportError:
      return _Silent(iterable, stream)
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream,
                dynamic_ncols=True)
  if log_every_s is None:
    return _Silent(iterable, stream)
  return _LogLines(iterable, stream, total=total, desc=desc, unit=unit, initial=initial, every_s=log_every_s)
