"""Smoke test: the exit-criteria experiment runs on the tiny fixture and writes well-formed outputs."""

import json
import os

import numpy as np

import exit_criteria


def test_exit_criteria_writes_results_and_plot(tiny_dir, tmp_path):
  out = str(tmp_path / "exits")
  res = exit_criteria.main(["--checkpoint", tiny_dir, "--out", out, "--num-steps", "6", "--max-new-tokens", "3",
                            "--num-prompts", "2", "--prompt-len", "5", "--criteria", "kl,argmax-stability",
                            "--num-thresholds", "2"])
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(res))
  assert saved["reference_mean_steps"] == 6.0
  assert [(r["criterion"], r["threshold"]) for r in saved["runs"]] == [
      ("kl", 1e-2), ("kl", 1e-3), ("argmax-stability", 2), ("argmax-stability", 5)]
  for r in saved["runs"]:
    assert 1.0 <= r["mean_steps"] <= 6.0
    assert 0.0 <= r["prefix_agreement"] <= r["agreement"] + 1e-9 <= 1.0 + 1e-9
  # argmax-stability with 2 stable steps can exit no later than with 5.
  stab = [r["mean_steps"] for r in saved["runs"] if r["criterion"] == "argmax-stability"]
  assert stab[0] <= stab[1]
  assert os.path.getsize(os.path.join(out, "exit_criteria.png")) > 1000


def test_agreement_helpers():
  ref = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
  tokens = np.array([[1, 9, 3, 4], [5, 6, 7, 8]])
  assert exit_criteria.agreement(tokens, ref) == 7 / 8
  assert exit_criteria.prefix_agreement(tokens, ref) == (1 / 4 + 1) / 2
