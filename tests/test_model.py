"""The recurrence loop in mixed precision: weights cast once outside it, their gradients summed in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import huginn_jax as hj
from huginn_jax.training import step as step_lib
from jaxpr_walk import casts_in_loops, eqns


def _grad(config, **kwargs):
  """The gradient function of a 3 + 2 iteration training loss on 12 random tokens."""
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (1, 12)), jnp.int32)
  return jax.grad(lambda p: step_lib.depth_loss(p, tokens, tokens, jnp.int32(3), jnp.int32(2),
                                                jax.random.split(jax.random.key(1), 1), model_config=config,
                                                max_grad_steps=3, **kwargs))


@pytest.fixture(scope="module")
def mixed():
  config = hj.get_config("tiny", param_dtype="float32", compute_dtype="bfloat16")
  return config, hj.init(config, jax.random.key(0)), _grad(config, remat_policy="nothing_saveable")


def test_core_weights_are_not_cast_inside_the_loop(mixed):
  config, params, grad = mixed
  core_shapes = {tuple(w.shape) for w in jax.tree.leaves(params["core"]) if w.ndim >= 2}
  casts = casts_in_loops(jax.make_jaxpr(grad)(params).jaxpr, core_shapes)
  assert not casts, casts[:2]


def test_weight_gradients_add_up_in_float32(mixed):
  config, params, grad = mixed
  grads = grad(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  core_shapes = {tuple(w.shape) for w in jax.tree.leaves(params["core"]) if w.ndim >= 2}
  loops = [eqn for eqn, _ in eqns(jax.make_jaxpr(grad)(params).jaxpr) if eqn.primitive.name in ("scan", "while")]
  weight_sums = [v.aval for eqn in loops for v in eqn.outvars if tuple(v.aval.shape) in core_shapes]
  assert weight_sums and all(a.dtype == jnp.float32 for a in weight_sums), weight_sums
  # and the gradient is that of the bf16 model: close to the float32 one
  exact = _grad(hj.get_config("tiny", param_dtype="float32", compute_dtype="float32"))(params)
  a, b = grads["core"]["adapter"], exact["core"]["adapter"]
  assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 0.1


class _FreezeRowOneAfterOneStep:
  """A StepObserver: row 1 stops after one iteration, and the loop after three."""

  def init(self, s0):
    return jnp.int32(0)

  def running(self, done):
    return jnp.stack([jnp.bool_(True), done < 1])

  def update(self, done, step, s, cache):
    return done + 1, cache

  def finished(self, done):
    return done >= 3


def test_iterate_with_an_observer_freezes_rows_and_stops_early():
  from huginn_jax import api
  from huginn_jax.model import iterate
  config = hj.get_config("tiny")
  params = hj.init(config, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, config.vocab_size, (2, 8)), jnp.int32)

  @jax.jit
  def run(params):
    model = api.model_from_params(params, config)
    p = api.prepare(model, tokens, init_scale=0.0)
    loop = lambda n, **kw: iterate(model.core, p.state, p.e, p.positions, p.mask, n, **kw)  # noqa: E731
    return loop(10, observer=_FreezeRowOneAfterOneStep()), loop(1).state, loop(3).state

  watched, one, three = run(params)
  assert int(watched.observed) == 3
  np.testing.assert_allclose(watched.state[0], three[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(watched.state[1], one[1], rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="observer runs a while loop"):
    iterate(None, jnp.zeros((1, 1, 2)), None, None, None, 1, max_steps=2, observer=_FreezeRowOneAfterOneStep())


def test_the_cast_check_tells_a_weight_cast_from_a_rounded_matmul():
  """casts_in_loops must still find a weight cast inside a loop, while a matmul's float32 result rounded to bf16
  (how 16-bit matmuls run on the CPU, gradients included) is not one."""
  w, x = jnp.ones((8, 8), jnp.float32), jnp.ones((8, 8), jnp.bfloat16)
  cast = lambda w, x: jax.lax.scan(lambda c, _: (c @ w.astype(jnp.bfloat16), None), x, None, length=3)[0]  # noqa
  rounded = lambda w, x: jax.lax.scan(  # noqa: E731
      lambda c, _: (jnp.dot(c, c, preferred_element_type=jnp.float32).astype(jnp.bfloat16), None), x, None, length=3)[0]
  assert len(casts_in_loops(jax.make_jaxpr(cast)(w, x).jaxpr, {(8, 8)})) == 1
  assert not casts_in_loops(jax.make_jaxpr(rounded)(w, x).jaxpr, {(8, 8)})
