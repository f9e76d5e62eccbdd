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


def test_chained_parity_follows_each_link_and_hops_count_them():
  max_hop = 3
  data = running_parity.make_examples(np.random.default_rng(1), 64, 30, start_token=running_parity.start_token(max_hop),
                                      max_hop=max_hop)
  assert running_parity.start_token(max_hop) == 6 and running_parity.vocab_size(max_hop) == 7
  tokens, labels, hops = data["inputs"][:, 1:], data["labels"][:, 1:], data["hops"][:, 1:]
  assert (data["inputs"][:, 0] == 6).all() and (data["labels"][:, 0] == -100).all() and (data["hops"][:, 0] == 0).all()
  step, bits = tokens // 2 + 1, tokens % 2
  assert step.min() == 1 and step.max() == max_hop
  for row in range(64):  # a direct reading of the rule, position by position
    for t in range(29):
      back = t - step[row, t]
      assert back >= -1  # never before the start
      prev_label, prev_hops = (labels[row, back], hops[row, back]) if back >= 0 else (0, 0)
      assert labels[row, t] == bits[row, t] ^ prev_label
      assert hops[row, t] == prev_hops + 1


def test_a_source_row_is_the_same_chain_as_a_batch_row():
  """A source builds one row at a time; its rows follow the same rule as a batch of them does."""
  source = running_parity.RunningParitySource(40, 25, seed=5, start_token=running_parity.start_token(3), max_hop=3)
  rows = [source[i] for i in range(40)]
  tokens = np.stack([r["inputs"][1:] for r in rows])
  step, bits = tokens // 2 + 1, tokens % 2
  labels, hops = running_parity._follow_chains(bits, step)  # the batch path (40 rows)
  np.testing.assert_array_equal(np.stack([r["labels"][1:] for r in rows]), labels)
  one = running_parity.make_examples(np.random.default_rng((5, 7)), 1, 25, start_token=6, max_hop=3)
  np.testing.assert_array_equal(one["inputs"], rows[7]["inputs"][None])
  assert hops.max() > 5  # long chains are in there
  assert hops.max() < 29  # links skip positions: shorter chains than running parity's


def test_running_parity_is_chained_parity_with_single_steps():
  rng = lambda: np.random.default_rng(5)
  plain = running_parity.make_examples(rng(), 3, 9, start_token=running_parity.START)
  assert running_parity.START == running_parity.start_token(1)
  np.testing.assert_array_equal(plain["hops"][:, 1:], np.broadcast_to(np.arange(1, 9), (3, 8)))
  np.testing.assert_array_equal(plain["labels"][:, 1:], np.bitwise_xor.accumulate(plain["inputs"][:, 1:], axis=1))


def test_curriculum_labels_short_chains_first():
  source = running_parity.RunningParitySource(100, 21, seed=2, curriculum_rows=50, start_links=2, start_token=6,
                                              max_hop=3)
  assert source.labelled_links(0) == 2 and source.labelled_links(25) == 11 and source.labelled_links(60) == 20
  for index in (0, 25, 60):
    row = source[index]
    full = running_parity.make_examples(np.random.default_rng((2, index)), 1, 21, start_token=6, max_hop=3)
    np.testing.assert_array_equal(row["inputs"], full["inputs"][0])
    keep = full["hops"][0] <= source.labelled_links(index)
    np.testing.assert_array_equal(row["labels"], np.where(keep, full["labels"][0], -100))
  assert (source[60]["labels"][1:] != -100).all()
  with pytest.raises(ValueError, match="start_links"):
    running_parity.RunningParitySource(10, 21, start_links=30, start_token=6)
  with pytest.raises(ValueError, match="max_hop"):
    running_parity.make_examples(np.random.default_rng(0), 1, 5, max_hop=0)


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
