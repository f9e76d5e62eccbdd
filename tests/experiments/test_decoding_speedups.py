"""Smoke test: the decoding-speedup experiment runs on the tiny fixture and writes well-formed outputs."""

import json
import os

import numpy as np

import decoding_speedups


def test_decoding_speedups_writes_results_and_plot(tiny_dir, tmp_path):
  out = str(tmp_path / "speed")
  decoding_speedups.main(["--checkpoint", tiny_dir, "--out", out, "--num-steps", "4", "--max-new-tokens", "3",
                          "--num-prompts", "2", "--prompt-len", "5", "--modes", "warm-start,speculative",
                          "--draft-steps", "2", "--lookahead", "2", "--repeats", "1"])
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  runs = {r["mode"]: r for r in saved["runs"]}
  assert list(runs) == ["plain", "warm-start", "speculative"]
  assert runs["plain"]["agreement"] == 1.0 and runs["plain"]["speedup"] == 1.0
  assert runs["plain"]["mean_steps"] == 4.0
  for r in runs.values():
    assert r["seconds"] > 0 and np.isfinite(r["tokens_per_second"]) and r["tokens_per_second"] > 0
    assert 0.0 <= r["agreement"] <= 1.0
  # Speculative greedy decoding with strict verification reproduces plain greedy decoding.
  assert runs["speculative"]["agreement"] == 1.0
  assert os.path.getsize(os.path.join(out, "speedups.png")) > 1000
