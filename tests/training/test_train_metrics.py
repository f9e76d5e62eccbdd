"""FLOP counts for MFU, and the metrics writer (JSONL, TensorBoard, console line)."""

import json
import os

import pytest

import huginn_jax as hj
from huginn_jax.training import metrics


def test_forward_flops_of_huginn_0125():
  config = hj.get_config("huginn-0125")
  # DESIGN.md section 5: one forward token at r=32 costs ~110 GFLOP (4096-token context)
  assert metrics.forward_flops_per_token(config, 4096, 32) == pytest.approx(110e9, rel=0.05)
  # without attention it is 2 FLOPs per parameter of the unrolled model (the core counted 32 times)
  d, i = config.d_model, config.intermediate_size
  core_params = config.n_layers_core * (4 * d * d + 3 * d * i) + 2 * d * d
  unrolled = hj.num_params(config) + 31 * core_params
  assert metrics.forward_flops_per_token(config, 0, 32) == pytest.approx(2 * unrolled, rel=0.01)


def test_train_flops_count_gradient_iterations_three_times():
  config = hj.get_config("tiny")
  core = metrics.forward_flops_per_token(config, 32, 1) - metrics.forward_flops_per_token(config, 32, 0)
  base = metrics.train_flops_per_token(config, 32, 0, 0)
  assert metrics.train_flops_per_token(config, 32, 5, 0) == pytest.approx(base + 5 * core)
  assert metrics.train_flops_per_token(config, 32, 0, 2) == pytest.approx(base + 6 * core)
  assert base == pytest.approx(3 * metrics.forward_flops_per_token(config, 32, 0))


def test_peak_flops_lookup():
  assert metrics.peak_flops_per_device(hj.get_config("tiny"), 1e12) == 1e12
  assert metrics.peak_flops_per_device(hj.get_config("tiny")) is None  # float32 on CPU: unknown peak


def test_writer_outputs(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path))
  writer.write(10, {"loss": 2.5, "lr": 1e-3, "n": 3, "k": 2, "skipped": False})
  writer.write(20, {"loss": 2.0, "lr": 1e-3, "n": 1, "k": 2, "skipped": True})
  writer.close()
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert rows == [{"step": 10, "loss": 2.5, "lr": 1e-3, "n": 3.0, "k": 2.0, "skipped": 0.0},
                  {"step": 20, "loss": 2.0, "lr": 1e-3, "n": 1.0, "k": 2.0, "skipped": 1.0}]
  events = [f for f in os.listdir(tmp_path / "tensorboard") if f.startswith("events.out.tfevents")]
  assert events and os.path.getsize(tmp_path / "tensorboard" / events[0]) > 100
  line = metrics.console_line(20, 100, {"loss": 2.0, "lr": 1e-3, "n": 1, "k": 2, "tokens_per_s": 12345.6,
                                        "mfu": 0.42, "skipped_total": 3})
  assert line == "step 20/100  loss 2.0000  lr 1.00e-03  tokens_per_s 12,346  mfu 42.0%  (n,k)=(1,2)  skipped 3"
