"""Sampling filters against a NumPy transcription of the original's rules, and the sampler's distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from huginn_jax.decoding import sampling


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def reference_probs(logits, temperature=1.0, top_k=None, top_p=None, min_p=None):
  probs = _softmax(logits / temperature)
  for row in probs:
    if top_k:
      row[row < np.sort(row)[::-1][top_k - 1]] = 0
    if top_p:
      order = np.argsort(-row, kind="stable")
      remove = np.cumsum(row[order]) > top_p
      remove[0] = False
      row[order[remove]] = 0
    if min_p:
      row[row < min_p * row.max()] = 0
  return probs / np.maximum(probs.sum(-1, keepdims=True), 1e-10)


LOGITS = np.random.default_rng(0).normal(0, 2.0, (4, 97)).astype(np.float32)
CASES = [dict(), dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8), dict(min_p=0.1),
         dict(temperature=1.3, top_k=20, top_p=0.9, min_p=0.05), dict(top_k=1), dict(top_p=1e-6)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_filters_match_the_reference(case):
  spec, params = sampling.make_sampling(97, temperature=case.get("temperature", 1.0), top_k=case.get("top_k"),
                                        top_p=case.get("top_p"), min_p=case.get("min_p"))
  got = np.asarray(sampling.filtered_probs(jnp.asarray(LOGITS), spec, params))
  np.testing.assert_allclose(got, reference_probs(LOGITS.astype(np.float64), **case), rtol=2e-5, atol=1e-7)


def test_top_p_drops_the_crossing_token():
  probs = jnp.array([[0.5, 0.3, 0.2]])
  np.testing.assert_allclose(np.asarray(sampling.top_p_filter(probs, 0.7)), [[0.5, 0.0, 0.0]])
  np.testing.assert_allclose(np.asarray(sampling.top_p_filter(probs, 0.85)), [[0.5, 0.3, 0.0]])


def test_top_k_keeps_ties_and_min_p_is_relative_to_the_top():
  probs = jnp.array([[0.4, 0.2, 0.2, 0.15, 0.05]])
  np.testing.assert_allclose(np.asarray(sampling.top_k_filter(probs, 2)), [[0.4, 0.2, 0.2, 0, 0]])
  np.testing.assert_allclose(np.asarray(sampling.min_p_filter(probs, 0.4)), [[0.4, 0.2, 0.2, 0, 0]])


def test_repetition_penalty_follows_hf():
  logits = jnp.array([[2.0, -2.0, 1.0, -1.0]])
  seen = sampling.mark_seen(jnp.zeros((1, 4), bool), jnp.array([[0, 1, 1]]))
  got = sampling.apply_repetition_penalty(logits, seen, jnp.float32(2.0))
  np.testing.assert_allclose(np.asarray(got), [[1.0, -4.0, 1.0, -1.0]])
  greedy, params = sampling.make_sampling(4, repetition_penalty=3.0)
  # penalised: token 0 -> 2/3 < 1.0, so greedy picks token 2
  assert int(sampling.next_token(logits, None, greedy, params, seen)[0]) == 2


def test_greedy_is_argmax_and_samples_follow_the_filtered_distribution():
  spec, params = sampling.make_sampling(97)
  np.testing.assert_array_equal(np.asarray(sampling.next_token(jnp.asarray(LOGITS), None, spec, params)),
                                LOGITS.argmax(-1))
  spec, params = sampling.make_sampling(97, temperature=1.0, top_k=6, min_p=0.05)
  row = np.repeat(LOGITS[:1], 4000, axis=0)
  draws = np.asarray(sampling.next_token(jnp.asarray(row), jax.random.key(3), spec, params))
  expected = reference_probs(LOGITS[:1].astype(np.float64), top_k=6, min_p=0.05)[0]
  freq = np.bincount(draws, minlength=97) / len(draws)
  assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(expected))
  np.testing.assert_allclose(freq, expected, atol=0.03)


def test_invalid_arguments():
  for kwargs in (dict(temperature=-1), dict(top_p=1.5), dict(min_p=-0.1), dict(top_k=2.5), dict(repetition_penalty=0)):
    with pytest.raises(ValueError):
      sampling.make_sampling(10, **kwargs)
