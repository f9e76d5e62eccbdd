"""Smoke test: the latent-trajectory experiment runs on the tiny fixture and writes well-formed outputs."""

import json
import os

import numpy as np

import latent_trajectories


def test_latent_trajectories_writes_results_and_plots(tiny_dir, tmp_path):
  out = str(tmp_path / "latents")
  res = latent_trajectories.main(["--checkpoint", tiny_dir, "--out", out, "--num-steps", "6", "--num-prompts", "2",
                                  "--prompt-len", "5", "--tokens-per-prompt", "2"])
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  assert saved["steps"] == list(range(1, 7)) == res["steps"]
  assert len(saved["mean_relative_change"]) == 6 and all(np.isfinite(saved["mean_relative_change"]))
  assert len(saved["tokens"]) == 4
  for tok in saved["tokens"]:
    assert np.asarray(tok["pca"]).shape == (7, 2)  # initial state + 6 iterations
    assert 0.0 <= sum(tok["explained_variance"]) <= 1.0 + 1e-6
    assert len(tok["relative_change"]) == 6 and min(tok["relative_change"]) >= 0
  for name in ("trajectories.png", "convergence.png"):
    assert os.path.getsize(os.path.join(out, name)) > 1000
