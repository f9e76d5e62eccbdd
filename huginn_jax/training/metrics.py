"""Training metrics: model FLOPs and MFU, and a writer to the console, a JSONL file and TensorBoard.

TensorBoard event files are written with ``tensorboardX`` (no TensorFlow needed); without it the writer warns
once and keeps the console and JSONL outputs.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Mapping

from huginn_jax.atomic_file import atomic_file

from huginn_jax import perf
from huginn_jax.progress import progress
# FLOP counts live in huginn_jax.flops; re-exported here, where the training loop uses them.
from huginn_jax.flops import forward_flops_per_token, train_flops_per_token  # noqa: F401


def peak_flops_per_device(model_config, configured: float | None = None) -> float | None:
  """The configured peak, else the bf16 peak of a known accelerator (None on CPU or in float32)."""
  if configured:
    return float(configured)
  if model_config.compute_dtype != "bfloat16":
    return None
  return perf.device_peak().bf16_flops


class MetricsWriter:
  """Writes scalar metrics per step to JSONL, TensorBoard and (via ``console``) a line of text."""

  def __init__(self, workdir: str, *, jsonl: bool = True, tensorboard: bool = True, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = self._tb = None
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl") if jsonl else None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if jsonl:
      self._jsonl = open(self.jsonl_path, "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:
        warnings.warn("tensorboardX is not installed: TensorBoard logs are off (pip install tensorboardX); "
                      "metrics still go to metrics.jsonl.", stacklevel=2)
      else:
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops the JSONL rows of steps after ``step`` (a resumed run logs them again), atomically."""
    if not self.enabled or self._jsonl is None:
      return
    self._jsonl.close()
    with open(self.jsonl_path) as f:
      lines = f.readlines()
    kept = [line for line in lines if _row_step(line) is not None and _row_step(line) <= step]
    if len(kept) != len(lines):
      with atomic_file(self.jsonl_path) as f:
        f.writelines(kept)
    self._jsonl = open(self.jsonl_path, "a")

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    scalars = {k: _scalar(v) for k, v in metrics.items()}
    if self._jsonl is not None:
      self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
      self._jsonl.flush()
    if self._tb is not None:
      for name, value in scalars.items():
        if value is not None and math.isfinite(value):
          self._tb.add_scalar(f"train/{name}", value, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _row_step(line: str) -> int | None:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None  # a row cut short by a kill


def _scalar(value) -> float | None:
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def console_line(step: int, total: int, metrics: Mapping[str, Any]) -> str:
  """One line of the important numbers, for the console."""
  parts = [f"step {step}/{total}"]
  fmt = {"loss": "{:.4f}", "grad_norm": "{:.3f}", "lr": "{:.2e}", "tokens_per_s": "{:,.0f}", "mfu": "{:.1%}"}
  for name, pattern in fmt.items():
    if metrics.get(name) is not None:
      parts.append(f"{name} " + pattern.format(float(metrics[name])))
  if "n" in metrics and "k" in metrics:
    parts.append(f"(n,k)=({int(metrics['n'])},{int(metrics['k'])})")
  if metrics.get("skipped_total"):
    parts.append(f"skipped {int(metrics['skipped_total'])}")
  return "  ".join(parts)


def progress_bar(total: int, initial: int, enabled: bool):
  """The bar over optimizer steps: on a terminal only; a log file gets the periodic metric lines instead."""
  return progress(total=total, initial=initial, desc="training", unit="step", enabled=enabled, log_every_s=None)
