"""Smoke test: the KV cache sharing experiment runs on the tiny fixture and writes well-formed outputs."""

import json
import os

import numpy as np

import kv_cache_sharing


def test_kv_cache_sharing_writes_results_and_plot(tiny_dir, tmp_path):
  out = str(tmp_path / "kv")
  kv_cache_sharing.main(["--checkpoint", tiny_dir, "--out", out, "--num-steps", "4", "--max-new-tokens", "3",
                         "--num-prompts", "2", "--prompt-len", "5", "--strategies", "compress-s2,compress-r2"])
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  assert saved["exit_criterion"] is None
  runs = {r["strategy"]: r for r in saved["runs"]}
  assert list(runs) == ["full", "compress-s2", "compress-r2"]  # full is always the reference
  assert runs["full"]["agreement"] == 1.0 and runs["full"]["memory_fraction"] == 1.0
  for r in runs.values():
    assert 0.0 <= r["agreement"] <= 1.0
    assert r["continuation_loglik"] <= 0.0 and np.isfinite(r["continuation_loglik"])
    assert r["cache_bytes"] > 0
  assert runs["compress-s2"]["cache_bytes"] < runs["full"]["cache_bytes"]
  assert os.path.getsize(os.path.join(out, "kv_cache.png")) > 1000


def test_continuation_loglik_matches_manual_sum(tiny_model):
  import jax
  import huginn_jax as hj
  config, params = tiny_model
  seq = np.array([[3, 7, 11, 200, 5, 9]])
  logits = np.asarray(hj.forward(params, seq, config=config, num_steps=2, init_scale=0.0).logits, np.float64)
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  manual = np.mean([logp[0, t - 1, seq[0, t]] for t in range(4, 6)])
  got = kv_cache_sharing.continuation_loglik(params, config, seq, 4, 2)
  assert abs(got - manual) < 1e-4
