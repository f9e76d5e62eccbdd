"""Scoring given continuations token by token: the original's adaptive generation, teacher-forced."""

import jax
import numpy as np
import pytest

import huginn_jax as hj
from huginn_jax.decoding.score import score_continuations

PROMPT = 8


def test_teacher_forcing_the_adaptive_generation_reproduces_its_steps(tiny_model, golden):
  """The golden adaptive (kl) generation, scored as a continuation of its prompt: every token is the argmax and
  spent the iterations the original spent on it."""
  config, params = tiny_model
  sequence = golden["gen_adaptive_kl"][0]
  prompt, new = sequence[:PROMPT], sequence[PROMPT:]
  got = score_continuations(params, [prompt], [PROMPT], [new], [len(new)], config=config, num_steps=16,
                            exit_criterion="kl", exit_threshold=5e-4)
  np.testing.assert_array_equal(np.asarray(got.steps)[0], golden["gen_adaptive_kl_steps"])
  assert np.asarray(got.greedy).all()
  assert len(set(golden["gen_adaptive_kl_steps"].tolist())) > 1  # the exits differ from token to token


def test_fixed_steps_equal_the_parallel_forward_and_padding_is_ignored(tiny_model, golden):
  """Without an exit rule, token-by-token scoring through the cache gives forward's log-probabilities; rows of
  different lengths in one padded batch score as they do alone."""
  config, params = tiny_model
  tokens = golden["tokens"][0, :14]
  logp = np.asarray(jax.nn.log_softmax(hj.forward(params, tokens[None], config=config, num_steps=4,
                                                  init_scale=0.0).logits, -1))[0]
  context = np.zeros((2, 8), np.int32)
  context[0, :5], context[1, :8] = tokens[:5], tokens[:8]
  targets = np.zeros((2, 9), np.int32)
  targets[0, :9], targets[1, :6] = tokens[5:14], tokens[8:14]
  got = score_continuations(params, context, [5, 8], targets, [9, 6], config=config, num_steps=4)
  lp, steps = np.asarray(got.logprobs), np.asarray(got.steps)
  np.testing.assert_allclose(lp[0], [logp[t - 1, tokens[t]] for t in range(5, 14)], atol=2e-5)
  np.testing.assert_allclose(lp[1, :6], [logp[t - 1, tokens[t]] for t in range(8, 14)], atol=2e-5)
  assert (lp[1, 6:] == 0).all() and (steps[1, 6:] == 0).all() and (steps[1, :6] == 4).all()
  np.testing.assert_array_equal(np.asarray(got.greedy)[0], [logp[t - 1].argmax() == tokens[t] for t in range(5, 14)])


def test_bad_inputs_are_named(tiny_model):
  config, params = tiny_model
  with pytest.raises(ValueError, match="exit_criterion"):
    score_continuations(params, [[1, 2]], [2], [[3]], [1], config=config, exit_criterion="nope")
  with pytest.raises(ValueError, match="max_seq_len"):
    score_continuations(params, np.ones((1, 250), int), [250], np.ones((1, 10), int), [10], config=config)
  with pytest.raises(ValueError, match="at least one"):
    score_continuations(params, [[1, 2]], [0], [[3]], [1], config=config)
