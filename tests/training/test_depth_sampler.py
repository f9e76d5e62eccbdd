"""The recurrence sampler: its statistics, its clamps, determinism per step, and where gradient flows."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

import huginn_jax as hj
from huginn_jax import api
from huginn_jax.model import iterate
from huginn_jax.training import sampler
from huginn_jax.training.step import depth_loss, initial_latent, row_keys


def _draws(mean_recurrence, k0, steps, seed=0):
  base = jax.random.key(seed)
  fn = jax.jit(jax.vmap(lambda s: sampler.sample_depth(sampler.step_key(base, s), mean_recurrence, k0)))
  n, k = fn(jnp.arange(steps))
  return np.asarray(n), np.asarray(k)


def test_statistics_of_r32():
  n, k = _draws(32, 8, 20000)
  p = n + k
  # p = Poisson(LogNormal(ln 32 - 1/8, 1/2)) + 1 has mean 33; its std is ~18, so the mean of 20000 draws is
  # within ~0.13 of it.
  assert abs(p.mean() - 33.0) < 0.6, p.mean()
  # the log-normal rate spreads p far more than a plain Poisson(32) would (std ~ 5.7)
  assert 14 < p.std() < 23, p.std()
  assert p.min() >= 1
  # the clamps: k = min(8, p), n = max(p - 8, 0)
  np.testing.assert_array_equal(k, np.minimum(p, 8))
  np.testing.assert_array_equal(n, np.maximum(p - 8, 0))
  short = p < 8
  assert short.any(), "some draws should be shorter than k0, exercising the clamp"
  assert (n[short] == 0).all() and (k[short] == p[short]).all()
  assert (k[~short] == 8).all()


def test_small_mean_targets_k0():
  # with r < k0 the original's log-normal targets max(r - k0, 0) + k0 = k0
  n, k = _draws(2, 4, 8000)
  assert abs((n + k).mean() - 5.0) < 0.15
  assert k.min() >= 1 and k.max() <= 4 and n.min() >= 0


def test_same_step_same_draw_and_steps_differ():
  base = jax.random.key(7)
  draw = lambda s: sampler.sample_depth(sampler.step_key(base, s), 32, 8)  # noqa: E731
  first = [tuple(int(x) for x in jax.jit(draw)(jnp.int32(s))) for s in range(20)]
  again = [tuple(int(x) for x in draw(s)) for s in range(20)]  # eager, another "host"
  assert first == again
  assert len(set(first)) > 5


def test_split_depth_validation():
  with pytest.raises(ValueError, match="max_grad_steps"):
    sampler.split_depth(jnp.int32(5), 0)
  with pytest.raises(ValueError, match="mean_recurrence"):
    sampler.sample_total_depth(jax.random.key(0), 0)


@pytest.fixture(scope="module")
def setup(tiny_model, golden):
  config, params = tiny_model
  tokens = jnp.asarray(golden["tokens"][:, :16], jnp.int32)
  labels = jnp.concatenate([tokens[:, 1:], jnp.full((2, 1), -100, jnp.int32)], axis=1)
  return config, params, tokens, labels


def test_gradient_flows_only_through_last_k_iterations(setup):
  config, params, tokens, labels = setup
  keys = row_keys(jax.random.key(3), tokens.shape[0])
  # the training loss checkpoints each gradient iteration; the reference does not (remat changes no number)
  loss = jax.jit(jax.value_and_grad(functools.partial(depth_loss, model_config=config, max_grad_steps=4,
                                                      remat_policy="nothing_saveable")))
  n, k = jnp.int32(3), jnp.int32(2)
  value, grads = loss(params, tokens, labels, n, k, keys)

  # The same computation written out: run 3 iterations by hand, freeze the state, then 2 with gradient.
  @jax.jit
  def state_after_no_grad_iterations(params):
    model = api.model_from_params(params, config)
    positions = jnp.arange(tokens.shape[1])[None]
    mask = hj.api._attention_mask(*tokens.shape, None)
    e, _ = model.run_prelude(tokens, positions, mask)
    s0 = initial_latent(params, config, keys, tokens.shape[1], 1.0)
    return iterate(model.core, s0, e, positions, mask, 3).state

  s3 = jax.lax.stop_gradient(state_after_no_grad_iterations(params))
  ref_value, ref_grads = jax.jit(jax.value_and_grad(
      lambda p: hj.loss(p, tokens, labels, config=config, depth=(0, 2), initial_state=s3,
                        remat_policy="none")))(params)
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    assert rel_err(a, b) < 1e-5

  # Both counts matter: another k changes the gradient (the masked scan really runs k iterations), and so does
  # another n (the no-gradient iterations move the state the gradient iterations start from).
  for other in ((n, jnp.int32(3)), (jnp.int32(0), k)):
    _, other_grads = loss(params, tokens, labels, *other, keys)
    assert rel_err(other_grads["core"]["adapter"], grads["core"]["adapter"]) > 1e-3


def test_fixed_sampler_runs_exactly_r_iterations():
  base = jax.random.key(0)
  for r, k0, expected in ((1, 1, (0, 1)), (12, 4, (8, 4)), (3, 8, (0, 3))):
    draws = {tuple(int(x) for x in sampler.sample_depth(sampler.step_key(base, s), r, k0, kind="fixed"))
             for s in range(10)}
    assert draws == {expected}
  with pytest.raises(ValueError, match="unknown depth sampler"):
    sampler.sample_depth(base, 4, 2, kind="uniform")
