"""layers.project, the one weight matmul of the model: values and gradients, and the float32 result XLA CPU is asked
for with 16-bit inputs (which is what runs its bfloat16 GEMM kernels)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from huginn_jax import layers

SPECS = [("bsd,dthk->bsthk", (2, 3, 8), (8, 3, 2, 4)), ("bshk,hkd->bsd", (2, 3, 2, 4), (2, 4, 8)),
         ("bd,vd->bv", (2, 8), (16, 8)), ("...i,id->...d", (2, 3, 16), (16, 8)),
         ("...i,id->...d", (5, 16), (16, 8))]


@pytest.mark.parametrize("spec,x_shape,w_shape", SPECS)
def test_bf16_values_and_gradients_are_the_einsums_accumulated_in_float32(spec, x_shape, w_shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
  out, vjp = jax.vjp(lambda x, w: layers.project(spec, x, w), x, w)
  assert out.dtype == jnp.bfloat16
  exact = jnp.einsum(spec, x.astype(jnp.float32), w.astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(exact.astype(jnp.bfloat16), np.float32))
  grad = jnp.asarray(rng.normal(size=out.shape), jnp.bfloat16)
  dx, dw = vjp(grad)
  ref_dx, ref_dw = jax.vjp(lambda x, w: jnp.einsum(spec, x, w.astype(x.dtype)), x, w)[1](grad)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  for got, ref in ((dx, ref_dx), (dw, ref_dw)):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32), rtol=2e-2, atol=2e-2)


def test_16_bit_inputs_ask_xla_for_a_float32_product_on_the_cpu():
  x, w = jnp.ones((4, 8), jnp.bfloat16), jnp.ones((8, 16), jnp.float32)

  def dots(x):
    text = jax.jit(lambda x, w: layers.project("md,dn->mn", x, w)).lower(x, w).as_text()
    return [line for line in text.splitlines() if "dot_general" in line]

  assert dots(x) and all("bf16>, tensor<8x16xbf16>) -> tensor<4x16xf32>" in line for line in dots(x)), dots(x)
  assert dots(x.astype(jnp.float32)) and not any("bf16" in line for line in dots(x.astype(jnp.float32)))


@pytest.mark.parametrize("policy,dots", [("dots_saveable", 3), ("dots_with_no_batch_dims_saveable", 3),
                                         ("nothing_saveable", 4)])
def test_the_dots_remat_policies_save_the_16_bit_products(policy, dots):
  """On the CPU a 16-bit product is a custom VJP, which the dots policies do not see as a dot: saved by its name,
  the backward recomputes nothing (1 forward + 2 gradient matmuls); nothing_saveable recomputes the forward one."""
  from huginn_jax import model
  from jaxpr_walk import eqns
  x, w = jnp.ones((4, 8), jnp.bfloat16), jnp.ones((8, 16), jnp.float32)
  f = jax.checkpoint(lambda x, w: jnp.sum(jnp.tanh(layers.project("md,dn->mn", x, w).astype(jnp.float32))),
                     policy=model.REMAT_POLICIES[policy])
  jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(x, w).jaxpr
  assert sum(eqn.primitive.name == "dot_general" for eqn, _ in eqns(jaxpr)) == dots


@pytest.mark.parametrize("spec", ["bsd,de->be", "md,...dn->mn", "bij,bjk->bik"])
def test_specs_whose_gradient_einsums_would_not_exist_are_refused(spec):
  with pytest.raises(ValueError, match="project"):
    layers.project(spec, jnp.ones((2, 3, 4)), jnp.ones((4, 5)))
