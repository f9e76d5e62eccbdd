"""The MFU peak lookup and the metrics writer (JSONL, TensorBoard, console line)."""

import json
import os

import huginn_jax as hj
from huginn_jax.training import metrics


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
