"""The functional API: jit (one compilation for every step count), grad, vmap, masks, and input errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import huginn_jax as hj
from conftest import rel_err


@pytest.fixture(scope="module")
def tokens(golden):
  return jnp.asarray(golden["tokens"][:, :12], jnp.int32)


def test_forward_under_jit_compiles_once_for_all_traced_step_counts(tiny_model, tokens):
  config, params = tiny_model
  fwd = jax.jit(functools.partial(hj.forward, config=config, init_scale=0.0))
  outs = {n: fwd(params, tokens, num_steps=jnp.int32(n)) for n in (0, 3, 7)}
  assert fwd._cache_size() == 1
  for n, out in outs.items():
    eager = hj.forward(params, tokens, config=config, num_steps=n, init_scale=0.0)
    assert rel_err(out.logits, eager.logits) < 1e-5, n


def test_init_output_shapes_and_dtypes(tiny_model, tokens):
  config, _ = tiny_model
  params = hj.init(config, jax.random.key(0))
  chex.assert_trees_all_equal_shapes_and_dtypes(params, hj.abstract_params(config))
  out = hj.forward(params, tokens, config=config, num_steps=2, key=jax.random.key(1))
  chex.assert_shape(out.logits, (*tokens.shape, config.vocab_size))
  chex.assert_shape(out.latents, (*tokens.shape, config.d_model))
  chex.assert_tree_all_finite(out)


def test_bfloat16_params_and_compute(tokens):
  config = hj.get_config("tiny", param_dtype="bfloat16", compute_dtype="bfloat16")
  params = hj.init(config, jax.random.key(0))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  out = hj.forward(params, tokens, config=config, num_steps=2, init_scale=0.0)
  chex.assert_type(out.logits, jnp.float32)
  chex.assert_type(out.latents, jnp.bfloat16)


def test_random_initial_state_depends_on_key_and_zero_scale_is_zero_state(tiny_model, tokens):
  config, params = tiny_model
  a = hj.forward(params, tokens, config=config, num_steps=2, key=jax.random.key(0))
  b = hj.forward(params, tokens, config=config, num_steps=2, key=jax.random.key(1))
  assert rel_err(a.logits, b.logits) > 1e-3
  zero = hj.forward(params, tokens, config=config, num_steps=2, init_scale=0.0)
  explicit = hj.forward(params, tokens, config=config, num_steps=2,
                        initial_state=jnp.zeros((*tokens.shape, config.d_model)))
  chex.assert_trees_all_close(zero, explicit)


def test_grad_of_loss_is_finite_and_reaches_every_parameter(tiny_model, tokens):
  config, params = tiny_model
  labels = jnp.roll(tokens, -1, axis=1).at[:, -1].set(-100)
  grads = jax.jit(jax.grad(functools.partial(hj.loss, config=config, depth=(1, 2), init_scale=0.0)))(
      params, tokens, labels)
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
  chex.assert_tree_all_finite(grads)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_vmap_over_a_leading_axis_equals_the_batched_call(tiny_model, tokens):
  config, params = tiny_model
  fwd = functools.partial(hj.forward, params, config=config, num_steps=2, init_scale=0.0)
  stacked = jax.vmap(fwd)(tokens[:, None, :])  # each call sees a batch of one
  batched = fwd(tokens)
  chex.assert_trees_all_close(stacked.logits[:, 0], batched.logits, rtol=1e-5, atol=1e-5)


def test_attention_mask_and_positions_make_left_padding_invisible(tiny_model, tokens):
  config, params = tiny_model
  seq = tokens[:1, :8]
  pad = 3
  padded = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), seq], axis=1)
  mask = jnp.arange(padded.shape[1])[None] >= pad
  positions = jnp.maximum(jnp.arange(padded.shape[1]) - pad, 0)[None]
  ref = hj.forward(params, seq, config=config, num_steps=3, init_scale=0.0)
  out = hj.forward(params, padded, config=config, num_steps=3, init_scale=0.0, attention_mask=mask,
                   positions=positions)
  assert rel_err(out.logits[:, pad:], ref.logits) < 1e-5
  unmasked = hj.forward(params, padded, config=config, num_steps=3, init_scale=0.0)
  assert rel_err(unmasked.logits[:, pad:], ref.logits) > 1e-3  # the original's behaviour: padding is seen


@pytest.mark.parametrize("bad,message", [
    (np.array([[1, 2, 256]]), "out of the vocabulary"),
    (np.array([[-1, 2, 3]]), "out of the vocabulary"),
    (np.array([1, 2, 3]), r"\[batch, seq\]"),
    (np.array([[1.0, 2.0]]), "integers"),
    (np.zeros((1, 257), np.int32), "max_seq_len"),
])
def test_bad_tokens_get_clear_errors(tiny_model, bad, message):
  config, params = tiny_model
  with pytest.raises(ValueError, match=message):
    hj.forward(params, bad, config=config, num_steps=1, init_scale=0.0)


def test_other_bad_inputs_get_clear_errors(tiny_model, tokens):
  config, params = tiny_model
  with pytest.raises(ValueError, match="key="):
    hj.forward(params, tokens, config=config, num_steps=1)
  with pytest.raises(ValueError, match="initial_state must be"):
    hj.forward(params, tokens, config=config, num_steps=1, initial_state=jnp.zeros((1, 2, 3)))
  with pytest.raises(ValueError, match="num_steps must be >= 0"):
    hj.forward(params, tokens, config=config, num_steps=-1, init_scale=0.0)
  with pytest.raises(ValueError, match="attention_mask"):
    hj.forward(params, tokens, config=config, num_steps=1, init_scale=0.0, attention_mask=jnp.ones((1, 3)))
  small = hj.get_config("tiny", d_model=32, head_dim=8)
  with pytest.raises(ValueError, match="params do not match"):
    hj.forward(params, tokens, config=small, num_steps=1, init_scale=0.0)


def test_chunked_loss_equals_the_whole_loss_and_gradient(tiny_model):
  """Both in one jitted program (a third of the time of two eager gradients, which compile op by op)."""
  config, params = tiny_model
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 37)), jnp.int32)
  labels = tokens.at[0, 5].set(-100).at[1, 30:].set(-100)  # ignored positions, and 37 is not a multiple of 8
  loss = lambda p, chunk: hj.loss(p, tokens, labels, config=config, depth=(2, 2), init_scale=0.0,  # noqa: E731
                                  loss_chunk=chunk)
  both = jax.jit(lambda p: (jax.value_and_grad(loss)(p, None), jax.value_and_grad(loss)(p, 8)))
  (whole, whole_grads), (chunked, chunked_grads) = both(params)
  assert abs(float(chunked) - float(whole)) < 1e-5 * abs(float(whole))
  for a, b in zip(jax.tree.leaves(chunked_grads), jax.tree.leaves(whole_grads)):
    assert rel_err(a, b) < 1e-5
  with pytest.raises(ValueError, match="loss_chunk"):
    jax.eval_shape(lambda p: loss(p, -1), params)  # refused while tracing, before anything runs


def test_chunked_loss_never_holds_all_the_logits():
  """Compiled, not run: the gradient's temporaries shrink by about the [B, S, vocab] float32 logits."""
  config = hj.get_config("tiny", vocab_size=65536, max_seq_len=512)
  params = jax.eval_shape(lambda: hj.init(config, jax.random.key(0)))
  tokens = jax.ShapeDtypeStruct((2, 512), jnp.int32)

  def temp_bytes(chunk):
    grad = jax.grad(lambda p, t: hj.loss(p, t, t, config=config, depth=(0, 1), init_scale=0.0, loss_chunk=chunk))
    return jax.jit(grad).lower(params, tokens).compile().memory_analysis().temp_size_in_bytes

  logits = 2 * 512 * 65536 * 4
  assert temp_bytes(128) < temp_bytes(None) - logits / 2


def test_loss_depth_pair_and_its_deprecated_spelling(tiny_model):
  config, params = tiny_model  # loaded for the other tests already (a fresh init compiles for ~5 s)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (1, 8)), jnp.int32)
  by_depth = hj.loss(params, tokens, tokens, config=config, depth=(1, 1), init_scale=0.0)
  with pytest.warns(DeprecationWarning, match="depth=\\(n, k\\)"):
    old = hj.loss(params, tokens, tokens, config=config, num_steps=(1, 1), init_scale=0.0)
  assert float(old) == float(by_depth)
  count = hj.loss(params, tokens, tokens, config=config, num_steps=2, init_scale=0.0)
  assert float(count) == float(hj.loss(params, tokens, tokens, config=config, depth=(0, 2), init_scale=0.0))
  with pytest.raises(ValueError, match="num_steps .* or depth=\\(n, k\\), not both"):
    hj.loss(params, tokens, tokens, config=config, num_steps=2, depth=(0, 2))
  with pytest.raises(ValueError, match="depth must be a pair"):
    hj.loss(params, tokens, tokens, config=config, depth=3)


def test_cross_entropy_and_its_gradient_match_the_log_softmax_definition():
  """hj.cross_entropy picks the label's log-probability as a masked sum (a cheaper gradient than a gather): it must
  stay the mean of -log_softmax(logits)[label] over labels != -100, and have that gradient (softmax minus one-hot)."""
  rng = np.random.default_rng(3)
  logits = jnp.asarray(rng.normal(size=(2, 7, 50)) * 4, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 50, (2, 7)), jnp.int32).at[0, 2].set(-100).at[1, 6].set(-100)
  value, grad = jax.value_and_grad(hj.cross_entropy)(logits, labels)
  z = np.asarray(logits, np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  valid = np.asarray(labels) != -100
  picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(value), -picked[valid].mean(), rtol=1e-6)
  expected = np.exp(logp) - np.eye(50)[np.where(valid, labels, 0)]
  expected = np.where(valid[..., None], expected, 0.0) / valid.sum()
  np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-7)
