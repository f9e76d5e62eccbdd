"""Smoke test of the main job: a few training steps of both models, then the full evaluation and plots."""

import json
import os

import numpy as np

from experiments import test_time_scaling


def test_main_job_writes_table_plots_and_results(tmp_path, capsys):
  out = tmp_path / "main"
  results = test_time_scaling.main(["--out", str(out), "--steps", "12", "--batch-size", "8", "--seq-len", "8",
                                    "--eval-rows", "16"])
  printed = capsys.readouterr().out
  assert "r | recurrent | baseline" in printed and "accuracy" in printed
  for name in ("results.json", "scaling.png", "adaptive.png"):
    assert os.path.getsize(out / name) > 1000, name
  with open(out / "results.json") as f:
    stored = json.load(f)
  assert stored["verdict"] == results["verdict"]
  for model in ("recurrent", "baseline"):
    acc = stored[model]["accuracy"]
    assert sorted(int(r) for r in acc) == list(test_time_scaling.EVAL_STEPS)
    for entry in acc.values():
      assert 0.0 <= entry["accuracy"] <= 1.0 and len(entry["by_position"]) == 8
    assert len(stored[model]["history"]) > 0 and np.isfinite(stored[model]["final_loss"])
  by_threshold = stored["adaptive"]["mean_exit_steps_by_position"]
  assert len(by_threshold) == 3
  for steps in by_threshold.values():
    steps = np.asarray(steps)
    assert steps.shape == (8,) and (steps >= 1).all() and (steps <= max(test_time_scaling.EVAL_STEPS)).all()
