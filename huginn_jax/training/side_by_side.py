"""Several pieces of work run side by side, one thread each, stopped together when one fails.

For programs too small to keep a CPU's cores busy: XLA runs the small ops of a small model on about one core at a
time, so two programs in two threads use a 2-core CPU better than one (``train_seeds``'s seed groups, the main
job's two models). JAX releases the GIL while a program runs, so the threads overlap where it matters.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable, Sequence


def run_side_by_side(work: Callable[[int, Any], Any], items: Sequence[Any],
                     stop: threading.Event | None = None) -> list[Any]:
  """``[work(i, item) for i, item in enumerate(items)]``, one thread per item when there are several.

  The first error (or an interrupt of the caller) sets ``stop``, which ``work`` should check between its steps
  (``train_seeds`` does, and raises ``TrainingStopped``), and is raised once every thread has returned."""
  if len(items) == 1:
    return [work(0, items[0])]
  stop = stop if stop is not None else threading.Event()
  with concurrent.futures.ThreadPoolExecutor(len(items)) as pool:
    futures = [pool.submit(work, i, item) for i, item in enumerate(items)]
    try:
      concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
      for future in futures:  # the first failure; the others may then end with TrainingStopped
        if future.done() and future.exception() is not None:
          raise future.exception()
      return [future.result() for future in futures]
    except BaseException:
      stop.set()
      raise
