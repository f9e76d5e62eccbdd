"""Speed-measuring helpers: device peaks, timing, compiled memory, and the profile summary of a real trace."""

import types

import jax
import jax.numpy as jnp
import pytest

from huginn_jax import perf


@pytest.mark.parametrize("kind, flops, bandwidth", [
    ("NVIDIA H100 80GB HBM3", 989e12, 3.35e12),
    ("NVIDIA H100 PCIe", 756e12, 2.0e12),
    ("NVIDIA H200", 989e12, 4.8e12),
    ("TPU v5 lite", 197e12, 0.819e12),
    ("TPU v5p", 459e12, 2.765e12),
])
def test_device_peak_lookup(kind, flops, bandwidth):
  peak = perf.device_peak(types.SimpleNamespace(device_kind=kind))
  assert (peak.bf16_flops, peak.bytes_per_s) == (flops, bandwidth)


def test_unknown_device_has_no_peak():
  peak = perf.device_peak(types.SimpleNamespace(device_kind="cpu"))
  assert peak.bf16_flops is None and peak.bytes_per_s is None


def test_time_call_waits_and_counts_runs():
  calls = []
  f = jax.jit(lambda x: x @ x)
  timing = perf.time_call(lambda: calls.append(1) or f(jnp.ones((64, 64))), repeats=4, warmup=2)
  assert len(calls) == 6 and timing.runs == 4
  assert 0 < timing.best <= timing.median


def test_compiled_memory_accounts_for_donation():
  x = jnp.ones((256, 256))
  plain = perf.compiled_memory(jax.jit(lambda x: x * 2).lower(x).compile())
  donated = perf.compiled_memory(jax.jit(lambda x: x * 2, donate_argnums=0).lower(x).compile())
  assert plain["argument"] == plain["output"] == 256 * 256 * 4
  assert plain["alias"] == 0 and donated["alias"] == 256 * 256 * 4
  assert donated["total"] == plain["total"] - 256 * 256 * 4


def test_trace_summary_names_the_operations(tmp_path):
  f = jax.jit(lambda a: jnp.tanh(a @ a) @ a)
  a = jnp.ones((256, 256))
  f(a).block_until_ready()
  with perf.trace(str(tmp_path)):
    for _ in range(3):
      f(a).block_until_ready()
  ops = perf.trace_ops(str(tmp_path))
  assert ops and all(op.total_ms >= 0 and op.count >= 1 for op in ops)
  assert not any(op.name.startswith("$") for op in ops)  # Python frames are not operations
  text = perf.summarize_trace(str(tmp_path), top=3)
  assert "top" in text and ops[0].name[:40] in text


def test_trace_summary_without_a_trace_says_how_to_record_one(tmp_path):
  with pytest.raises(FileNotFoundError, match="perf.trace"):
    perf.trace_ops(str(tmp_path))


def test_categories():
  assert perf.categorize("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
  assert perf.categorize("cudnn_generated_fort_native_sdpa") == "attention"
  assert perf.categorize("loop_fusion_12") == "other fusions"
  assert perf.categorize("dynamic-update-slice.3") == "copy/transfer"


def test_self_times_subtract_nested_events():
  events = [{"name": "while", "ts": 0, "dur": 100, "pid": 1, "tid": 1},
            {"name": "gemm", "ts": 10, "dur": 30, "pid": 1, "tid": 1},
            {"name": "fusion", "ts": 50, "dur": 20, "pid": 1, "tid": 1},
            {"name": "gemm", "ts": 0, "dur": 40, "pid": 1, "tid": 2}]  # another thread: not nested
  totals = {}
  for name, t in perf._self_times(events):
    totals[name] = totals.get(name, 0) + t
  assert totals == {"while": 50, "gemm": 70, "fusion": 20}
