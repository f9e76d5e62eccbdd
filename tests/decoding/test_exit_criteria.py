"""Each exit criterion's values against direct NumPy formulas, and the exit tests."""

import jax.numpy as jnp
import numpy as np
import pytest

from huginn_jax.decoding.exit_criteria import CRITERIA, get_criterion

RNG = np.random.default_rng(0)
V = 50
LOGITS = [RNG.normal(0, 1.5, (2, V)).astype(np.float32) for _ in range(3)]
LATENTS = [RNG.normal(0, 1.0, (2, 3, 8)).astype(np.float32) for _ in range(3)]
VALID = np.array([[True, True, True], [True, True, False]])


def _logp(x):
  x = x.astype(np.float64)
  return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))


def _run(name, s0):
  crit = get_criterion(name)
  state = crit.init(2, V, jnp.asarray(s0))
  values = []
  for logits, latents in zip(LOGITS, LATENTS):
    state, v = crit.update(state, latents=jnp.asarray(latents), logits=jnp.asarray(logits), valid=jnp.asarray(VALID))
    values.append(np.asarray(v))
  return values


def test_kl_is_kl_of_previous_to_current_starting_from_uniform():
  prev = np.full((2, V), -np.log(V))
  for got, logits in zip(_run("kl", LATENTS[0]), LOGITS):
    cur = _logp(logits)
    np.testing.assert_allclose(got, (np.exp(prev) * (prev - cur)).sum(-1), rtol=1e-4, atol=1e-6)
    prev = cur
  first = _run("kl", LATENTS[0])[0]  # KL(uniform || p) = -log V - mean log p
  np.testing.assert_allclose(first, -np.log(V) - _logp(LOGITS[0]).mean(-1), rtol=1e-4)


def test_minp_kl_floors_small_probabilities():
  prev = np.full((2, V), -np.log(V))
  for got, logits in zip(_run("minp-kl", LATENTS[0]), LOGITS):
    p = np.exp(_logp(logits))
    p = np.where(p < 0.1 * p.max(-1, keepdims=True), 1.0 / V, p)
    cur = np.log(p / p.sum(-1, keepdims=True))
    np.testing.assert_allclose(got, (np.exp(prev) * (prev - cur)).sum(-1), rtol=1e-4, atol=1e-6)
    prev = cur


def test_entropy_diff_starts_from_100():
  prev = np.full(2, 100.0)
  for got, logits in zip(_run("entropy-diff", LATENTS[0]), LOGITS):
    p = np.exp(_logp(logits))
    ent = -(p * np.log(p + 1e-10)).sum(-1)
    np.testing.assert_allclose(got, np.abs(ent - prev), rtol=1e-5)
    prev = ent


def test_latent_criteria_average_over_real_positions():
  s0 = RNG.normal(0, 1.0, (2, 3, 8)).astype(np.float32)
  prev = s0
  for diff, cos, cur in zip(_run("latent-diff", s0), _run("cosine", s0), LATENTS):
    rel = np.linalg.norm(cur - prev, axis=-1) / np.linalg.norm(cur, axis=-1)
    c = (cur * prev).sum(-1) / np.linalg.norm(cur, axis=-1) / np.linalg.norm(prev, axis=-1)
    np.testing.assert_allclose(diff, [rel[0].mean(), rel[1, :2].mean()], rtol=1e-5)
    np.testing.assert_allclose(cos, [1 - c[0].mean(), 1 - c[1, :2].mean()], rtol=1e-4, atol=1e-6)
    prev = cur


def test_cosine_from_a_zero_state_never_exits_on_the_first_step():
  crit = get_criterion("cosine")
  state = crit.init(2, V, jnp.zeros((2, 3, 8)))
  _, values = crit.update(state, latents=jnp.asarray(LATENTS[0]), logits=None, valid=jnp.asarray(VALID))
  assert np.isnan(np.asarray(values)).all() and not np.asarray(crit.exits(values, 1.0)).any()


def test_argmax_stability_counts_unchanged_steps():
  crit = get_criterion("argmax-stability")
  state = crit.init(1, 4, None)
  counts = []
  for top in (1, 1, 1, 2, 2):
    logits = jnp.zeros((1, 4)).at[0, top].set(1.0)
    state, v = crit.update(state, latents=None, logits=logits, valid=None)
    counts.append(int(v[0]))
  assert counts == [0, 1, 2, 0, 1]
  assert bool(crit.exits(jnp.array([2.0]), 2)[0]) and not bool(crit.exits(jnp.array([1.0]), 2)[0])


def test_defaults_are_the_originals():
  assert {k: c.default_threshold for k, c in CRITERIA.items()} == {
      "kl": 1e-3, "minp-kl": 1e-5, "entropy-diff": 1e-3, "latent-diff": 0.03, "cosine": 1e-3, "argmax-stability": 5}
  with pytest.raises(ValueError, match="exit_criterion"):
    get_criterion("nope")
