"""Training metrics: model FLOPs and MFU, and a writer to the console, a JSONL file and TensorBoard.

TensorBoard event files are written with ``tensorboardX`` (no TensorFlow needed); without it the writer warns
once and keeps the console and JSONL outputs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from typing import Any, Mapping

import jax

# Dense bf16 peak FLOP/s per device, by substrings of ``jax.Device.device_kind``.
PEAK_BF16_FLOPS = (
    ("h200", 989e12), ("h100", 989e12), ("a100", 312e12), ("l40s", 362e12), ("a10g", 125e12),
    ("tpu v6", 918e12), ("tpu v5p", 459e12), ("tpu v5 lite", 197e12), ("tpu v5e", 197e12), ("tpu v4", 275e12),
)


def peak_flops_per_device(model_config, configured: float | None = None) -> float | None:
  """The configured peak, else the bf16 peak of a known accelerator (None on CPU or in float32)."""
  if configured:
    return float(configured)
  if model_config.compute_dtype != "bfloat16":
    return None
  kind = jax.devices()[0].device_kind.lower()
  for name, flops in PEAK_BF16_FLOPS:
    if name in kind:
      return flops
  return None


def _block_and_outer_flops(model_config, seq_len: int) -> tuple[float, float]:
  """Forward FLOPs per token of one core iteration (adapter + core blocks) and of everything outside the core."""
  d, i, v = model_config.d_model, model_config.intermediate_size, model_config.vocab_size
  block = 2 * (4 * d * d + 3 * d * i) + 2 * d * seq_len  # matmuls + causal attention (2 * 2 * d * seq / 2)
  core = model_config.n_layers_core * block + 2 * (2 * d * d)
  outer = (model_config.n_layers_prelude + model_config.n_layers_coda) * block + 2 * d * v
  return core, outer


def forward_flops_per_token(model_config, seq_len: int, num_steps: int) -> float:
  """Model FLOPs of one token through a forward pass with ``num_steps`` core iterations."""
  core, outer = _block_and_outer_flops(model_config, seq_len)
  return outer + num_steps * core


def train_flops_per_token(model_config, seq_len: int, n: float, k: float) -> float:
  """Model FLOPs of one training token for a step with n no-gradient and k gradient iterations.

  Matmuls count 2 FLOPs per multiply-add. Parts with gradient (prelude, k core iterations, coda, head) cost 3x
  their forward; the n no-gradient iterations cost 1x. Recomputation by activation checkpointing is not model
  FLOPs and is not counted.
  """
  core, outer = _block_and_outer_flops(model_config, seq_len)
  return 3.0 * (outer + k * core) + 1.0 * n * core


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
  """A tqdm bar over optimizer steps (a no-op object when disabled or tqdm is missing)."""
  if enabled:
    try:
      from tqdm.auto import tqdm
      return tqdm(total=total, initial=initial, desc="training", unit="step", file=sys.stderr, dynamic_ncols=True)
    except ImportError:
      pass

  class _NoBar:
    def update(self, n=1):
      pass

    def set_postfix_str(self, s):
      pass

    def write(self, s):
      print(s, file=sys.stderr)

    def close(self):
      pass
  return _NoBar()
