"""SIGTERM / SIGINT end a run at the next step boundary, with a checkpoint, instead of killing it mid-step.

One process: the handlers only set a flag that the loop reads after every step. A second SIGINT (Ctrl-C twice)
raises ``KeyboardInterrupt`` at once. Several processes: every host must save at the same step, so SIGTERM goes
through JAX's preemption service (``jax.distributed`` installs its own SIGTERM handler and agrees on a step with
the other hosts: ``reached_preemption_sync_point``). A SIGINT reaches one host only and cannot be agreed on
without a collective every step, so on several hosts SIGINT keeps its default (``KeyboardInterrupt``, no
checkpoint) and SIGTERM on every host is the way to stop a pod run cleanly (what ``tpu_setup/stop.sh`` sends).
"""

from __future__ import annotations

import signal
import threading

import jax


class StopSignals:
  """``with StopSignals() as stop:`` ... ``stop.requested(step)`` is the signal name once the run should stop."""

  def __init__(self):
    self._received: str | None = None
    self._previous: dict[int, object] = {}
    self._multi = jax.process_count() > 1

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self._received == "SIGINT" and name == "SIGINT":
      raise KeyboardInterrupt
    self._received = name

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers can only be installed from the main thread
    if self._multi:
      return self  # JAX's preemption service handles SIGTERM; see the module docstring
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def requested(self, step: int) -> str | None:
    """The signal that asks this run to stop after ``step`` (the same answer on every host), else None."""
    if self._multi:
      from jax.experimental import multihost_utils
      try:
        return "SIGTERM" if multihost_utils.reached_preemption_sync_point(step) else None
      except RuntimeError:  # the preemption service is off
        return None
    return self._received
