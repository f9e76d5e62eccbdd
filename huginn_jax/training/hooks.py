"""What the loop does after each step, as small hooks: divergence checks, user callbacks, logging, checkpoints.

A hook has ``after_step(ctx)``; the loop calls them in order (the divergence check first, so nothing of a diverged
step is logged as good or saved). ``ctx.host_metrics()`` copies the step's scalar metrics to the host once.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from huginn_jax.training import metrics as metrics_lib
from huginn_jax.training.errors import TrainingDiverged

StepCallback = Callable[[int, dict, dict], None]  # (step just finished, metrics on host, host batch)


@dataclasses.dataclass
class StepContext:
  step: int  # optimizer steps done, this one included
  end: int  # the step this call of ``train`` ends at
  state: Any
  metrics: dict  # on device
  host_batch: dict
  _host: dict | None = None

  def host_metrics(self) -> dict:
    if self._host is None:
      self._host = {k: v.item() for k, v in jax.device_get(self.metrics).items()}
    return self._host


def _finite(*values) -> bool:
  return all(v is not None and math.isfinite(v) for v in values)


class DivergenceCheck:
  """Stops the run (``TrainingDiverged``) on the step where it diverges, before it is logged or saved.

  With ``skip_nonfinite`` a non-finite step changes nothing and the run stops after ``max_consecutive`` of them in
  a row; without it, the first non-finite step has already spoilt the params, so the run stops there and then.
  """

  def __init__(self, optimizer_config, last_saved: Callable[[], int | None]):
    self.skip = bool(optimizer_config.skip_nonfinite)
    self.max_in_a_row = int(optimizer_config.max_consecutive_nonfinite)
    self.last_saved = last_saved

  def after_step(self, ctx: StepContext) -> None:
    m = ctx.host_metrics()
    saved = self.last_saved()
    resume = (f"the last checkpoint is step {saved}" if saved is not None else "no checkpoint was saved")
    if not self.skip and not _finite(m["loss"], m["grad_norm"]):
      raise TrainingDiverged(f"step {ctx.step}: the loss ({m['loss']}) or the gradients are not finite and "
                             f"train.optimizer.skip_nonfinite is off, so the params are spoilt; {resume}. Lower "
                             "train.optimizer.lr, turn on skip_nonfinite, or check the data.")
    if self.skip and m["skipped_in_a_row"] >= self.max_in_a_row:
      raise TrainingDiverged(f"step {ctx.step}: {int(m['skipped_in_a_row'])} steps in a row had non-finite "
                             f"gradients (train.optimizer.max_consecutive_nonfinite={self.max_in_a_row}); {resume}. "
                             "Lower train.optimizer.lr or check the data.")


class Callbacks:
  """The user's ``callbacks``, each called with (step, host metrics, host batch)."""

  def __init__(self, callbacks: Sequence[StepCallback]):
    self.callbacks = list(callbacks)

  def after_step(self, ctx: StepContext) -> None:
    for callback in self.callbacks:
      callback(ctx.step, ctx.host_metrics(), ctx.host_batch)


class MetricsLog:
  """Every ``every`` steps and at the end: throughput and MFU over the window, then JSONL, TensorBoard, console."""

  def __init__(self, every: int, total_steps: int, writer, bar, flops_of_step: Callable[[int], float],
               tokens_per_step: int, peak: float | None, is_main: bool):
    self.every, self.total_steps, self.writer, self.bar = every, total_steps, writer, bar
    self.flops_of_step, self.tokens_per_step, self.peak, self.is_main = flops_of_step, tokens_per_step, peak, is_main
    self.history: list[dict] = []
    self._reset()

  def _reset(self) -> None:
    self.window_start, self.window_steps, self.window_flops = time.perf_counter(), 0, 0.0

  def after_step(self, ctx: StepContext) -> None:
    self.bar.update(1)
    self.window_steps += 1
    self.window_flops += self.flops_of_step(ctx.step - 1)
    if ctx.step % self.every and ctx.step != ctx.end:
      return
    m = ctx.host_metrics()
    elapsed = max(time.perf_counter() - self.window_start, 1e-9)
    m["tokens_per_s"] = self.window_steps * self.tokens_per_step / elapsed
    m["mfu"] = self.window_flops / elapsed / (self.peak * jax.device_count()) if self.peak else None
    for key in [k for k, v in m.items() if v is None]:
      del m[key]
    self.writer.write(ctx.step, m)
    self.history.append({"step": ctx.step, **m})
    self.bar.set_postfix_str(f"loss {m['loss']:.4f}")
    if self.is_main:
      self.bar.write(metrics_lib.console_line(ctx.step, self.total_steps, m))
    self._reset()


@jax.jit
def _all_finite(params) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(params)]))


class Checkpointing:
  """Saves every ``every`` steps and at the end (``save`` also on a stop signal); never a non-finite state, so
  keep-K rotation can only drop a good checkpoint for another good one."""

  def __init__(self, checkpointer, meta: dict, every: int):
    self.checkpointer, self.meta, self.every = checkpointer, meta, every
    self.last_saved: int | None = checkpointer.latest_step()

  def after_step(self, ctx: StepContext) -> None:
    if ctx.step % self.every == 0 or ctx.step == ctx.end:
      self.save(ctx)

  def save(self, ctx: StepContext) -> None:
    if self.last_saved == ctx.step:
      return
    if not bool(_all_finite(ctx.state.params)):
      raise TrainingDiverged(f"step {ctx.step}: the params are not finite; not saving them (the last checkpoint, "
                             f"step {self.last_saved}, stays). Lower train.optimizer.lr or check the data.")
    self.checkpointer.save(ctx.step, ctx.state, None, self.meta, force=True)  # data position = the step
    self.last_saved = ctx.step
