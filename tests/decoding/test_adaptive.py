"""Adaptive compute: the static cache against a literal dict-cache model of the original, and per-row exits."""

import numpy as np
import pytest

import huginn_jax as hj
from tests.decoding.reference import adaptive_generate
from tests.decoding.test_generate import _recompute_greedy

PROMPT = 8


@pytest.mark.parametrize("strategy,criterion,threshold,new_tokens,continuous", [
    ("latest-m4", "latent-diff", 0.05, 8, False),  # early-exited tokens are read at their latest step of the layer
    ("compress-s3", "kl", 5e-4, 5, False),  # slots shared across core layers, overwritten by whichever ran last
    ("full", "kl", 5e-4, 5, True),  # warm start from the previous token's state at its exit (before ln_f)
    ("always-last-m4", "latent-diff", 0.05, 8, False),  # early-exited tokens make every token read at its last step
    ("latest-m4-compress-s8", "latent-diff", 0.05, 8, False),  # latest lookup inside two recurrences' slots
])
def test_matches_a_literal_model_of_the_original(tiny_model, golden, strategy, criterion, threshold, new_tokens,
                                                 continuous):
  config, params = tiny_model
  prompt = golden["tokens"][0, :PROMPT]
  tokens, used = adaptive_generate(params, config, prompt, new_tokens, 16, criterion, threshold, strategy,
                                   continuous)
  out = hj.generate(params, prompt[None], config=config, max_new_tokens=new_tokens, num_steps=16, init_scale=0.0,
                    exit_criterion=criterion, exit_threshold=threshold, cache=strategy, continuous=continuous)
  np.testing.assert_array_equal(np.asarray(out.sequences)[0], tokens)
  np.testing.assert_array_equal(np.asarray(out.steps)[0], used)
  assert len(set(used.tolist())) > 1  # tokens really exited at different depths


def test_rows_exit_independently(tiny_model, golden):
  """Each row of a batch decodes, exits and caches exactly as it would alone: row 0 as the original's golden, row 1
  as a batch of two copies of it (nothing another row could change differs there; the same program as the pair)."""
  config, params = tiny_model
  kw = dict(config=config, max_new_tokens=12, num_steps=16, init_scale=0.0, exit_criterion="kl", exit_threshold=5e-4)
  both = hj.generate(params, golden["tokens"][:, :PROMPT], **kw)
  row1 = hj.generate(params, golden["tokens"][[1, 1], :PROMPT], **kw)
  np.testing.assert_array_equal(np.asarray(both.sequences)[0], golden["gen_adaptive_kl"][0])
  np.testing.assert_array_equal(np.asarray(both.steps)[0], golden["gen_adaptive_kl_steps"])
  np.testing.assert_array_equal(np.asarray(both.sequences)[1], np.asarray(row1.sequences)[0])
  np.testing.assert_array_equal(np.asarray(both.steps)[1], np.asarray(row1.steps)[0])
  assert not np.array_equal(np.asarray(both.steps)[0], np.asarray(both.steps)[1])


def test_exit_after_one_step_equals_one_fixed_step(tiny_model, golden):
  """latent-diff from a zero state is exactly 1 at the first step: a threshold above 1 exits every token there."""
  config, params = tiny_model
  prompt = golden["tokens"][:1, :PROMPT]
  adaptive = hj.generate(params, prompt, config=config, max_new_tokens=8, num_steps=16, init_scale=0.0,
                         exit_criterion="latent-diff", exit_threshold=1.5, cache="latest-m4")
  np.testing.assert_array_equal(np.asarray(adaptive.sequences), _recompute_greedy(tiny_model, prompt, 8, 1))
  assert (np.asarray(adaptive.steps) == 1).all()
