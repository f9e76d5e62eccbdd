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


def reference_dry(context, vocab, multiplier=0.8, base=1.75, allowed=2, lookback=128, max_match=32):
  """The original's DRY loops, transcribed literally: the amount subtracted from each logit."""
  penalty = np.zeros(vocab)
  n = len(context)
  for token in range(vocab):
    longest = 0
    for start in range(max(0, n - lookback), n - 1):
      match = 0
      while start + match < n and match < max_match and context[start + match] == context[n - match - 1]:
        match += 1
      if match > 0 and start + match < n and context[start + match] == token:
        longest = max(longest, match + 1)
    if longest >= allowed:
      penalty[token] = multiplier * base ** (longest - allowed)
  return penalty


def _dry(context, vocab=12, width=16, multiplier=0.8, base=1.75, allowed=2, lookback=128, max_match=32):
  row = np.zeros((1, width), np.int32)
  row[0, :len(context)] = context
  return np.asarray(sampling.dry_penalty(jnp.asarray(row), jnp.array([len(context)]), vocab, jnp.float32(multiplier),
                                         jnp.float32(base), jnp.int32(allowed), lookback, max_match))[0]


def test_dry_hand_computed():
  """[5 6 7 8 9 7 6 5]: read forward from position 0, "5 6 7" mirrors the last three tokens read backward, so 8 (the
  token after the match) continues a match of 3 + 1 = 4 >= allowed 2 and loses 0.8 * 1.75**2 = 2.45; no other start
  matches. With max_match 2 the match stops at "5 6", so 7 loses 0.8 * 1.75 = 1.4; with allowed 5, or with a
  lookback of 3 (starts 5 and 6 only), nothing is penalised. [1 2 3 1 2]: 3 follows the one-token match "2" -> 0.8."""
  expected = np.zeros(12)
  expected[8] = 2.45
  np.testing.assert_allclose(_dry([5, 6, 7, 8, 9, 7, 6, 5]), expected, rtol=1e-6)
  expected = np.zeros(12)
  expected[7] = 1.4
  np.testing.assert_allclose(_dry([5, 6, 7, 8, 9, 7, 6, 5], max_match=2), expected, rtol=1e-6)
  assert not _dry([5, 6, 7, 8, 9, 7, 6, 5], allowed=5).any()
  assert not _dry([5, 6, 7, 8, 9, 7, 6, 5], lookback=3).any()
  expected = np.zeros(12)
  expected[3] = 0.8
  np.testing.assert_allclose(_dry([1, 2, 3, 1, 2]), expected, rtol=1e-6)
  assert not _dry([4]).any() and not _dry([]).any()


def test_dry_matches_the_original_loops_on_random_contexts():
  rng = np.random.default_rng(1)
  for length in (2, 5, 9, 16, 23):
    context = rng.integers(0, 4, length).tolist()  # a small alphabet makes long matches likely
    for kwargs in (dict(), dict(allowed=1, base=2.0), dict(lookback=6, max_match=3)):
      np.testing.assert_allclose(_dry(context, vocab=4, width=24, **kwargs), reference_dry(context, 4, **kwargs),
                                 rtol=1e-6, err_msg=f"{context} {kwargs}")


def test_dry_through_next_token_and_history():
  """next_token subtracts DRY from each row's logits given its History; mark_seen appends to the sequence."""
  spec, params = sampling.make_sampling(12, dry_multiplier=0.8)
  assert spec.dry and not spec.repetition_penalty
  tokens = jnp.array([[5, 6, 7, 8, 9, 7, 6, 5, 0, 0]])
  history = sampling.init_history(spec, tokens[:, :7], jnp.ones((1, 7), bool), 12, 10)
  history = sampling.mark_seen(history, tokens[:, 7:9], jnp.array([[True, False]]))
  assert int(history.length[0]) == 8 and history.seen is None
  logits = jnp.zeros((1, 12)).at[0, 8].set(2.0).at[0, 3].set(0.5)  # 8 leads by 2.0 but loses 2.45
  assert int(sampling.next_token(logits, None, spec, params, history)[0]) == 3
  with pytest.raises(ValueError, match="cannot be combined"):
    sampling.make_sampling(12, repetition_penalty=1.2, dry_multiplier=0.8)
