"""The benchmark suite runs end to end on the tiny shape and reports every figure it promises (no timing checks)."""

import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _suite():
  spec = importlib.util.spec_from_file_location("suite", os.path.join(ROOT, "benchmarks", "suite.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_quick_suite_reports_prefill_decode_and_train_rows(tmp_path):
  """float32: this CPU has no bfloat16 matmuls (emulated, a third slower end to end); the rows are the same."""
  out = tmp_path / "results"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "suite.py"), "--quick", "--repeats", "1",
                         "--dtype", "float32", "--out", str(out)], capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  by_work = {}
  for row in rows:
    by_work.setdefault(row["work"], []).append(row)
  assert set(by_work) == {"prefill", "decode", "train_step"}
  assert {(r["batch"], r["cache"]) for r in by_work["decode"]} == {(1, "full"), (8, "full"), (1, "compress-s4"),
                                                                   (8, "compress-s4")}
  for row in rows:
    assert row["tokens_per_s"] > 0 and row["device"] and row["date"] and row["shape"] == "tiny"
    assert "mfu" in row and "peak_gib" in row
  train = by_work["train_step"][0]
  assert (train["n"], train["k"]) == (24, 8) and train["planned_total_gib"] > 0 and train["state_gib"] > 0
  assert by_work["prefill"][0]["core_step_ms"] > 0
  assert "| decode | tiny | 8 | compress-s4 |" in (out / "results.md").read_text()
  assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_marks_targets_met_and_missed():
  suite = _suite()
  rows = [{"work": "prefill", "shape": "huginn-0125", "batch": 1, "tokens_per_s": 6000.0, "mfu": 0.6},
          {"work": "decode", "shape": "huginn-0125", "batch": 1, "cache": "full", "tokens_per_s": 12.0},
          {"work": "decode", "shape": "huginn-0125", "batch": 8, "cache": "compress-s4", "tokens_per_s": 90.0}]
  lines = suite.table(rows, with_targets=True).splitlines()[2:]
  assert lines[0].endswith("| 5,500.0 | 3,845.0 | yes |") and "60.0%" in lines[0]
  assert lines[1].endswith("| 20.0 | 2.6 | **no** |")
  assert lines[2].endswith("|  |  |  |")  # batch 8 compress-s4 is not one of the targets
  assert "yes" not in suite.table(rows, with_targets=False)


def test_plot_draws_targets_and_the_original(tmp_path):
  suite = _suite()
  rows = [{"work": "prefill", "shape": "huginn-0125", "batch": 1, "tokens_per_s": 6000.0},
          {"work": "decode", "shape": "huginn-0125", "batch": 1, "cache": "full", "tokens_per_s": 12.0}]
  suite.plot(rows, str(tmp_path / "p.png"), "test")
  assert (tmp_path / "p.png").stat().st_size > 1000
