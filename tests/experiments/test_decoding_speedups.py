"""Smoke test: the decoding-speedup experiment runs on the tiny fixture and writes well-formed outputs."""

import json
import os

import numpy as np

import decoding_speedups


def test_decoding_speedups_writes_results_and_plot(tiny_dir, tmp_path):
  out = str(tmp_path / "speed")
  decoding_speedups.main(["--checkpoint", tiny_dir, "--out", out, "--num-steps", "4", "--max-new-tokens", "3",
                          "--num-prompts", "2", "--prompt-len", "5", "--modes", "warm-start,speculative,diffusion",
                          "--draft-steps", "2", "--lookahead", "2", "--repeats", "1", "--diffusion-inner", "2",
                          "--diffusion-wavefront", "4"])
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  runs = {r["mode"]: r for r in saved["runs"]}
  assert list(runs) == ["plain", "warm-start", "speculative", "diffusion"]
  assert runs["plain"]["agreement"] == 1.0 and runs["plain"]["speedup"] == 1.0
  assert runs["plain"]["mean_steps"] == 4.0
  assert runs["plain"]["tokens_per_core_pass"] == 0.25 and runs["speculative"]["tokens_per_core_pass"] is None
  # The diffusion sampler: 4 prefill passes + 2 per round, its counters per row, some tokens frozen.
  diffusion = runs["diffusion"]
  assert len(diffusion["rounds"]) == 2 and min(diffusion["rounds"]) >= 1
  assert diffusion["core_forward_passes"] == [1 + 2 * r for r in diffusion["rounds"]]
  n_new = diffusion["tokens_per_second"] * diffusion["seconds"]
  assert abs(diffusion["tokens_per_core_pass"] * sum(4 + 2 * r for r in diffusion["rounds"]) - n_new) < 1e-6
  assert n_new >= 2 * 3 and diffusion["mean_steps"] > 0
  for r in runs.values():
    assert r["seconds"] > 0 and np.isfinite(r["tokens_per_second"]) and r["tokens_per_second"] > 0
    assert 0.0 <= r["agreement"] <= 1.0
  # Speculative greedy decoding with strict verification reproduces plain greedy decoding.
  assert runs["speculative"]["agreement"] == 1.0
  assert os.path.getsize(os.path.join(out, "speedups.png")) > 1000
