"""The running-parity task and the evaluation helpers of the main job."""

import jax
import numpy as np
import pytest

import huginn_jax as hj
from huginn_jax.tasks import evaluate, running_parity


def test_labels_are_the_running_xor_and_rows_are_deterministic():
  source = running_parity.RunningParitySource(num_rows=50, seq_len=12, seed=3)
  row = source[7]
  assert row["inputs"].shape == row["labels"].shape == (12,)
  expected = np.bitwise_xor.accumulate(row["inputs"])
  np.testing.assert_array_equal(row["labels"], expected)
  np.testing.assert_array_equal(source[7]["inputs"], row["inputs"])
  assert not np.array_equal(source[8]["inputs"], row["inputs"])
  with pytest.raises(IndexError):
    source[50]
  with pytest.raises(ValueError, match="positive"):
    running_parity.RunningParitySource(0, 12)


def test_accuracy_and_exit_steps_on_the_fixture_model(tiny_model):
  config, params = tiny_model
  data = running_parity.make_examples(np.random.default_rng(0), 4, 10)
  acc = evaluate.accuracy_by_steps(params, config, data["inputs"], data["labels"], [1, 3])
  assert set(acc) == {1, 3}
  for r, result in acc.items():
    pred = np.asarray(hj.forward(params, data["inputs"], config=config, num_steps=r, init_scale=0.0).logits.argmax(-1))
    assert result["accuracy"] == pytest.approx(float(np.mean(pred == data["labels"])))
    assert len(result["by_position"]) == 10
  steps = evaluate.kl_exit_steps(params, config, data["inputs"], max_steps=6, threshold=1e-2)
  assert steps.shape == (4, 10) and steps.min() >= 1 and steps.max() <= 6
  # Reference: the same rule from full forwards at each iteration count.
  logps = [np.full((4, 10, config.vocab_size), -np.log(config.vocab_size))]
  for r in range(1, 7):
    logits = hj.forward(params, data["inputs"], config=config, num_steps=r, init_scale=0.0).logits
    logps.append(np.asarray(jax.nn.log_softmax(logits, -1)))
  kls = np.stack([np.sum(np.exp(p) * (p - c), -1) for p, c in zip(logps[:-1], logps[1:])])  # [6, B, S]
  below = kls < 1e-2
  expected = np.where(below.any(0), below.argmax(0) + 1, 6)
  np.testing.assert_array_equal(steps, expected)
