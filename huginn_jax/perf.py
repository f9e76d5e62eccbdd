"""Measuring speed honestly: device peaks, wall-clock timing of jitted work, peak memory, and profile summaries.

Used by ``benchmarks/`` and the training loop's MFU. Timings always wait for the device (``block_until_ready``)
and exclude compilation; the profile summary reads the Perfetto trace that ``jax.profiler`` writes, so a run can be
broken down by operation without TensorBoard.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import gzip
import json
import os
import statistics
import time
from typing import Any, Callable, NamedTuple

import jax

# (substring of jax.Device.device_kind, lowercased; dense bf16 FLOP/s; memory bandwidth in bytes/s), from the
# vendors' data sheets. The first match wins, so longer names come before their prefixes.
DEVICE_PEAKS = (
    ("h200", 989e12, 4.8e12),
    ("h100 pcie", 756e12, 2.0e12),
    ("h100", 989e12, 3.35e12),
    ("a100-sxm4-40gb", 312e12, 1.555e12),
    ("a100", 312e12, 2.039e12),
    ("l40s", 362e12, 0.864e12),
    ("a10g", 125e12, 0.6e12),
    ("tpu v6", 918e12, 1.64e12),
    ("tpu v5p", 459e12, 2.765e12),
    ("tpu v5 lite", 197e12, 0.819e12),
    ("tpu v5e", 197e12, 0.819e12),
    ("tpu v4", 275e12, 1.2e12),
)


class DevicePeak(NamedTuple):
  name: str
  bf16_flops: float | None  # FLOP/s; None for an unknown device (e.g. a CPU)
  bytes_per_s: float | None


def device_peak(device: jax.Device | None = None) -> DevicePeak:
  """The data-sheet peaks of ``device`` (default: the first device); None fields for a device not in the table."""
  device = device or jax.devices()[0]
  kind = device.device_kind
  for name, flops, bandwidth in DEVICE_PEAKS:
    if name in kind.lower():
      return DevicePeak(kind, flops, bandwidth)
  return DevicePeak(kind, None, None)


class Timing(NamedTuple):
  best: float  # seconds
  median: float
  runs: int


def time_call(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> Timing:
  """Wall-clock seconds of ``fn()`` until its outputs are ready, after ``warmup`` untimed calls (compilation)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(max(repeats, 1)):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return Timing(min(times), statistics.median(times), len(times))


def peak_memory_bytes(device: jax.Device | None = None) -> int | None:
  """The device allocator's peak bytes in use since the process started (None where not reported, e.g. CPU)."""
  device = device or jax.devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # backends without allocator statistics
    return None
  return None if not stats else stats.get("peak_bytes_in_use")


def compiled_memory(compiled) -> dict[str, int] | None:
  """What XLA planned for a compiled program: argument, output, temporary and aliased (donated) bytes."""
  try:
    stats = compiled.memory_analysis()
  except Exception:
    return None
  if stats is None:
    return None
  out = {name: int(getattr(stats, f"{name}_size_in_bytes")) for name in ("argument", "output", "temp", "alias")}
  out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


@contextlib.contextmanager
def trace(directory: str | None):
  """``jax.profiler.trace`` writing a Perfetto trace into ``directory``; does nothing when it is None."""
  if directory is None:
    yield
    return
  os.makedirs(directory, exist_ok=True)
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    yield


# Kernel-name patterns of the categories the summary groups by (checked in order, lowercased).
CATEGORIES = (
    ("attention", ("cudnn", "fmha", "flash", "splash", "attention")),
    ("matmul", ("gemm", "cublas", "cutlass", "xmma", "matmul", "dot", "convolution", "ynn_fusion")),
    ("copy/transfer", ("memcpy", "memset", "copy", "transpose", "dynamic-update-slice", "dynamic_update_slice",
                       "scatter", "gather")),
    ("collective", ("all-reduce", "all_reduce", "all-gather", "reduce-scatter", "nccl", "collective")),
)


def categorize(name: str, categories=CATEGORIES, default: str = "other fusions") -> str:
  """The first category of ``categories`` ((name, substrings) pairs) one of whose substrings is in ``name``."""
  lower = name.lower()
  for category, patterns in categories:
    if any(p in lower for p in patterns):
      return category
  return default


class OpTime(NamedTuple):
  name: str
  category: str
  total_ms: float
  count: int


def _trace_file(directory: str) -> str:
  files = sorted(glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {directory}; record one with "
                            "huginn_jax.perf.trace(directory) (jax.profiler.trace with create_perfetto_trace=True).")
  return files[-1]


_HOST_NOISE = ("PjitFunction", "PjRt", "Execute", "ThunkExecutor", "ThreadPool", "Allocate", "ParseArguments",
               "TransferToDevice", "BufferFromHost")


def _self_times(events: list[dict]) -> list[tuple[str, float]]:
  """(name, self time in microseconds) of complete events: nested events (a while loop around its body, a
  launch around its kernels) are subtracted from the event that encloses them on the same thread."""
  out = []
  by_thread: dict[tuple, list[dict]] = collections.defaultdict(list)
  for e in events:
    by_thread[(e.get("pid"), e.get("tid"))].append(e)
  for thread in by_thread.values():
    thread.sort(key=lambda e: (float(e.get("ts", 0.0)), -float(e.get("dur", 0.0))))
    stack: list[list] = []  # [end, name, self time]
    for e in thread:
      start, dur = float(e.get("ts", 0.0)), float(e.get("dur", 0.0))
      while stack and stack[-1][0] <= start:
        _, name, self_time = stack.pop()
        out.append((name, self_time))
      if stack:
        stack[-1][2] -= dur
      stack.append([start + dur, e["name"], dur])
    out.extend((name, self_time) for _, name, self_time in stack)
  return out


def trace_ops(directory: str) -> list[OpTime]:
  """Self time per operation in the newest trace under ``directory``, longest first.

  On accelerators these are the kernels of the device timelines (processes named ``/device:...``); on a CPU, where
  XLA runs on host threads, the host events that are not Python frames or runtime bookkeeping.
  """
  with gzip.open(_trace_file(directory)) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  device_pids = {pid for pid, name in names.items() if name.startswith("/device:")}
  complete = [e for e in events if e.get("ph") == "X"]
  if device_pids:
    complete = [e for e in complete if e.get("pid") in device_pids]
  else:
    complete = [e for e in complete if not e["name"].startswith("$") and not any(n in e["name"] for n in _HOST_NOISE)]
  totals: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
  for name, self_time in _self_times(complete):
    totals[name][0] += max(self_time, 0.0) / 1e3
    totals[name][1] += 1
  ops = [OpTime(name, categorize(name), ms, n) for name, (ms, n) in totals.items()]
  return sorted(ops, key=lambda op: -op.total_ms)


def summarize_trace(directory: str, top: int = 15) -> str:
  """A printable breakdown of a trace: time by category, then the ``top`` operations."""
  ops = trace_ops(directory)
  total = sum(op.total_ms for op in ops) or 1.0
  by_category: dict[str, float] = collections.defaultdict(float)
  for op in ops:
    by_category[op.category] += op.total_ms
  lines = [f"profile ({total:.1f} ms of operations in {directory}):"]
  for category, ms in sorted(by_category.items(), key=lambda kv: -kv[1]):
    lines.append(f"  {category:<16} {ms:>10.2f} ms  {ms / total:>6.1%}")
  lines.append(f"  top {min(top, len(ops))} operations:")
  for op in ops[:top]:
    lines.append(f"    {op.total_ms:>10.2f} ms {op.total_ms / total:>6.1%} x{op.count:<5} [{op.category}] "
                 f"{op.name[:90]}")
  return "\n".join(lines)
