"""What every benchmark script shares: its common flags, the run header, and result rows as JSON lines."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

import jax

import huginn_jax as hj
from huginn_jax import attention, host_malloc, perf

GIB = 1 << 30


def parser(doc: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shape", default="tiny", help="config preset: tiny (CPU), small, huginn-0125 (an accelerator)")
  p.add_argument("--dtype", default="bfloat16", help="compute dtype (and param dtype outside training)")
  p.add_argument("--attention", default="auto", choices=attention.IMPLEMENTATIONS)
  p.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
  p.add_argument("--json", default=None, help="append one JSON line per result to this file")
  p.add_argument("--profile", default=None, metavar="DIR",
                 help="record a Perfetto trace of one extra run into DIR and print its breakdown by operation")
  p.add_argument("--force", action="store_true", help="run a >1B-parameter shape on CPU anyway")
  return p


def model_config(args, **overrides):
  config = hj.get_config(args.shape, param_dtype=overrides.pop("param_dtype", args.dtype), compute_dtype=args.dtype,
                         attention_impl=args.attention, **overrides)
  if hj.num_params(config) > 1e9 and jax.default_backend() == "cpu" and not args.force:
    raise SystemExit(f"{args.shape} has {hj.num_params(config) / 1e9:.1f}B params: run it on an accelerator, or "
                     "pass --force to run it on this CPU anyway (slow, needs lots of RAM).")
  return config


def header(name: str) -> dict:
  """Prints and returns where and when the figures are measured."""
  device = jax.devices()[0]
  peak = perf.device_peak(device)
  info = {"benchmark": name, "device": device.device_kind, "backend": jax.default_backend(),
          "devices": jax.device_count(), "jax": jax.__version__, "host": platform.node(),
          "date": datetime.date.today().isoformat(), "peak_bf16_tflops": (peak.bf16_flops or 0) / 1e12 or None,
          "peak_tb_per_s": (peak.bytes_per_s or 0) / 1e12 or None}
  peaks = (f"peak {info['peak_bf16_tflops']:.0f} TFLOP/s bf16, {info['peak_tb_per_s']:.2f} TB/s"
           if peak.bf16_flops else "no known peak for this device (MFU not reported)")
  print(f"{name} on {info['devices']}x {info['device']} ({info['backend']}), jax {info['jax']}, {info['date']}; "
        f"{peaks}", flush=True)
  if info["backend"] == "cpu":  # huge pages or 4 KiB ones for XLA's per-call buffers: up to ~20%
    info["host_malloc"] = host_malloc.describe()
    print(info["host_malloc"], flush=True)
  return info


def mfu(flops_per_s: float) -> float | None:
  peak = perf.device_peak().bf16_flops
  return flops_per_s / peak if peak else None


def bandwidth_use(bytes_per_s: float) -> float | None:
  peak = perf.device_peak().bytes_per_s
  return bytes_per_s / peak if peak else None


def peak_gib() -> float | None:
  peak = perf.peak_memory_bytes()
  return None if peak is None else peak / GIB


def fmt(value, pattern: str = "{:.1f}") -> str:
  return "n/a" if value is None else pattern.format(value)


def emit(info: dict, row: dict, json_path: str | None) -> None:
  """Appends ``info`` + ``row`` as one JSON line to ``json_path`` (if given)."""
  if json_path is None:
    return
  os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
  with open(json_path, "a") as f:
    f.write(json.dumps({**info, **row}) + "\n")


def profile(fn, directory: str | None) -> None:
  """One more run of ``fn`` under the profiler, then the breakdown of where its time went."""
  if directory is None:
    return
  with perf.trace(directory):
    jax.block_until_ready(fn())
  print(perf.summarize_trace(directory), flush=True)
