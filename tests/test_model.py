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
