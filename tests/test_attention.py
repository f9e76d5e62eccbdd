"""The attention backends: the Pallas TPU splash kernel (Pallas interpreter on CPU) against XLA attention, alone
and inside the whole model, with padding masks, gradients and a device mesh; and the cuDNN request off GPU."""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import huginn_jax as hj
from huginn_jax import attention, layers
from conftest import rel_err

TOL = 1e-5


@pytest.fixture(autouse=True)
def _quiet_interpreter():
  """The interpret-mode warning is asserted once, in its own test; elsewhere it is noise."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="attention_impl='pallas'")
    yield


def _qkv(shape, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys)


def _padding(batch, seq):
  """Row 0 right-padded (last 5 tokens), row 1 left-padded (first 7), others real."""
  valid = np.ones((batch, seq), bool)
  valid[0, -5:] = False
  valid[1, :7] = False
  return jnp.asarray(valid)


@pytest.mark.parametrize("shape", [(2, 24, 4, 16), (1, 130, 2, 96)], ids=["tiny", "huginn_head_dim_96"])
def test_pallas_matches_xla_causal(shape):
  q, k, v = _qkv(shape)
  mask = attention.SelfAttentionMask()
  out = attention.pallas_attention(q, k, v, mask, interpret=True)
  chex.assert_shape(out, shape)
  chex.assert_type(out, jnp.float32)
  ref = attention.xla_attention(q, k, v, mask)
  assert rel_err(out, ref) < TOL


def test_pallas_matches_xla_with_padding_mask():
  q, k, v = _qkv((2, 24, 4, 16), seed=1)
  valid = _padding(2, 24)
  mask = attention.SelfAttentionMask(kv_valid=valid)
  out = attention.pallas_attention(q, k, v, mask, interpret=True)
  ref = attention.xla_attention(q, k, v, mask)
  # Rows of padding queries are meaningless (nothing reads them); every real row must match.
  rows = np.asarray(valid)
  assert rel_err(np.asarray(out)[rows], np.asarray(ref)[rows]) < TOL
  unmasked = attention.xla_attention(q, k, v, attention.SelfAttentionMask())
  assert rel_err(np.asarray(out)[rows], np.asarray(unmasked)[rows]) > 1e-3, "the padding mask changed nothing"


def test_pallas_without_mask_is_full_attention():
  """No mask: every query sees every key, though the sequence is padded to the kernel block inside."""
  q, k, v = _qkv((2, 20, 2, 16), seed=2)
  out = attention.pallas_attention(q, k, v, None, interpret=True)
  assert rel_err(out, attention.xla_attention(q, k, v, None)) < TOL


def test_pallas_bfloat16_close_to_float32_reference():
  q, k, v = _qkv((1, 64, 2, 96), jnp.bfloat16, seed=3)
  mask = attention.SelfAttentionMask()
  out = attention.pallas_attention(q, k, v, mask, interpret=True)
  chex.assert_type(out, jnp.bfloat16)
  ref = attention.xla_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask)
  assert rel_err(out, ref) < 2e-2


def test_pallas_gradients_match_xla():
  q, k, v = _qkv((2, 24, 2, 16), seed=4)
  w = jax.random.normal(jax.random.key(5), q.shape)
  mask = attention.SelfAttentionMask(kv_valid=_padding(2, 24))

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * w * mask.kv_valid[:, :, None, None])

  pallas = jax.grad(loss(lambda *a: attention.pallas_attention(*a, interpret=True)), argnums=(0, 1, 2))(q, k, v)
  xla = jax.grad(loss(attention.xla_attention), argnums=(0, 1, 2))(q, k, v)
  for name, got, want in zip("qkv", pallas, xla):
    assert rel_err(got, want) < TOL, name


def test_pallas_off_tpu_warns_and_interprets():
  assert jax.default_backend() != "tpu"
  q, k, v = _qkv((1, 8, 2, 16))
  with pytest.warns(UserWarning, match="interpret"):
    out = attention.pallas_attention(q, k, v, attention.SelfAttentionMask())
  assert rel_err(out, attention.xla_attention(q, k, v, attention.SelfAttentionMask())) < TOL


def test_pallas_with_dense_mask_or_cache_uses_xla():
  """Decoding masks (dense, queries shorter than keys) are computed by XLA; the result is the reference's."""
  q, _, _ = _qkv((2, 3, 2, 16), seed=6)
  _, k, v = _qkv((2, 10, 2, 16), seed=7)
  mask = attention.causal_mask(3, 10, q_offset=7)
  chex.assert_trees_all_equal(attention.pallas_attention(q, k, v, mask, interpret=True),
                              attention.xla_attention(q, k, v, mask))


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_pallas_under_a_mesh_runs_per_shard(axis_type):
  """With a (data, fsdp, tensor) mesh set, the kernel runs inside shard_map on sharded inputs."""
  kind = getattr(jax.sharding.AxisType, axis_type)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(kind,) * 3)
  q, k, v = _qkv((4, 24, 4, 16), seed=8)
  mask = attention.SelfAttentionMask(kv_valid=jnp.ones((4, 24), bool).at[0, -3:].set(False))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor", None))
  q, k, v = (jax.device_put(x, sharding) for x in (q, k, v))
  with jax.set_mesh(mesh):
    fn = jax.jit(lambda q, k, v, mask: attention.pallas_attention(q, k, v, mask, interpret=True))
    text = fn.lower(q, k, v, mask).as_text()
    out = fn(q, k, v, mask)
  assert "shard_map" in text or "manual" in text.lower()
  rows = np.asarray(mask.kv_valid)
  assert rel_err(np.asarray(out)[rows], np.asarray(attention.xla_attention(q, k, v, mask))[rows]) < TOL


def test_kernel_partition_respects_divisibility():
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  assert attention._kernel_partition(mesh, batch=4, heads=4) == (("data", "fsdp"), "tensor")
  # 55 heads (Huginn-0125) do not split over tensor=2; a batch of 2 splits over data only.
  assert attention._kernel_partition(mesh, batch=2, heads=55) == (("data",), None)


def test_cudnn_off_gpu_raises_naming_the_fix():
  q, k, v = _qkv((1, 8, 2, 16))
  with pytest.raises(ValueError, match=r"attention_impl='cudnn'.*NVIDIA GPU.*attention_impl='xla'"):
    attention.dot_product_attention(q, k, v, attention.SelfAttentionMask(), impl="cudnn")


def test_unknown_backend_raises():
  q, k, v = _qkv((1, 8, 2, 16))
  with pytest.raises(ValueError, match="Unknown attention implementation 'flash'"):
    attention.dot_product_attention(q, k, v, None, impl="flash")


def test_layers_reexports_the_attention_functions():
  assert layers.dot_product_attention is attention.dot_product_attention
  assert layers.causal_mask is attention.causal_mask


def _with_impl(config, impl):
  config = config.copy_and_resolve_references()
  config.attention_impl = impl
  return config


def test_forward_with_pallas_matches_xla(tiny_model, golden):
  config, params = tiny_model
  tokens, state = golden["tokens"], jnp.asarray(golden["input_states"])
  outs = {impl: hj.forward(params, tokens, config=_with_impl(config, impl), num_steps=3, initial_state=state)
          for impl in ("xla", "pallas")}
  assert rel_err(outs["pallas"].logits, outs["xla"].logits) < TOL
  assert rel_err(outs["pallas"].latents, outs["xla"].latents) < TOL
  assert rel_err(outs["xla"].logits, golden["logits_steps4"]) > 1e-3  # 3 steps differ from 4: the check has teeth
  traced = jax.make_jaxpr(lambda p: hj.forward(p, tokens, config=_with_impl(config, "pallas"), num_steps=3,
                                               initial_state=state).logits)(params)
  assert "pallas_call" in str(traced), "the pallas backend did not run the kernel"


def test_forward_with_pallas_and_padding_matches_xla(tiny_model, golden):
  config, params = tiny_model
  tokens, state = golden["tokens"], jnp.asarray(golden["input_states"])
  valid = _padding(2, 24)
  outs = {impl: hj.forward(params, tokens, config=_with_impl(config, impl), num_steps=2, initial_state=state,
                           attention_mask=valid) for impl in ("xla", "pallas")}
  rows = np.asarray(valid)
  assert rel_err(np.asarray(outs["pallas"].logits)[rows], np.asarray(outs["xla"].logits)[rows]) < TOL


def test_loss_gradients_with_pallas_match_xla(tiny_model, golden):
  config, params = tiny_model
  tokens = golden["tokens"]
  labels = np.concatenate([tokens[:, 1:], np.full((2, 1), -100)], axis=1)
  state = jnp.asarray(golden["input_states"])

  def grad(impl):
    loss = lambda p: hj.loss(p, tokens, labels, config=_with_impl(config, impl), depth=(1, 1),  # noqa: E731
                             initial_state=state)
    return jax.jit(jax.grad(loss))(params)

  grads = {impl: grad(impl) for impl in ("xla", "pallas")}
  errors = jax.tree.map(rel_err, grads["pallas"], grads["xla"])
  worst = max(jax.tree.leaves(errors))
  assert worst < TOL, errors


def test_auto_on_cpu_is_blocked_for_plain_causal_and_xla_with_padding():
  q, k, v = _qkv((2, 24, 4, 16))
  mask = attention.SelfAttentionMask(kv_valid=_padding(2, 24))
  assert attention.auto_impl(q, k, mask) == "xla"
  chex.assert_trees_all_equal(attention.dot_product_attention(q, k, v, mask, impl="auto"),
                              attention.xla_attention(q, k, v, mask))
  causal = attention.SelfAttentionMask()
  assert attention.auto_impl(q, k, causal) == "blocked"
  chex.assert_trees_all_equal(attention.dot_product_attention(q, k, v, causal, impl="auto"),
                              attention.blocked_attention(q, k, v, causal))


@pytest.mark.parametrize("seq, block", [(300, 128), (256, 128), (24, 128), (24, 5)])
def test_blocked_equals_xla_in_values_and_gradients(seq, block):
  """Every block size, a last block shorter than the others, and one block: the same outputs and gradients as the
  reference, to float32 rounding."""
  q, k, v = _qkv((2, seq, 4, 16))
  causal = attention.SelfAttentionMask()
  weights = jax.random.normal(jax.random.key(3), q.shape)
  loss = lambda fn: lambda q, k, v: jnp.sum(weights * fn(q, k, v))  # noqa: E731
  blocked = lambda q, k, v: attention.blocked_attention(q, k, v, causal, block=block)  # noqa: E731
  reference = lambda q, k, v: attention.xla_attention(q, k, v, causal)  # noqa: E731
  np.testing.assert_allclose(blocked(q, k, v), reference(q, k, v), atol=2e-6, rtol=1e-5)
  for got, want in zip(jax.grad(loss(blocked), argnums=(0, 1, 2))(q, k, v),
                       jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_blocked_hands_other_masks_to_xla():
  q, k, v = _qkv((2, 24, 4, 16))
  for mask in (attention.SelfAttentionMask(kv_valid=_padding(2, 24)), attention.causal_mask(24, 24), None):
    chex.assert_trees_all_equal(attention.blocked_attention(q, k, v, mask), attention.xla_attention(q, k, v, mask))
  assert hj.get_config("huginn-0125").attention_impl == "auto"


@pytest.mark.parametrize("platform, dtype, query_len, dense, expected", [
    ("gpu", jnp.bfloat16, 16, False, "cudnn"),
    ("gpu", jnp.float32, 16, False, "xla"),  # cuDNN flash attention needs half precision
    ("gpu", jnp.bfloat16, 1, False, "xla"),  # a decoded token against its cache
    ("gpu", jnp.bfloat16, 16, True, "xla"),  # a dense mask (cached decoding)
    ("tpu", jnp.float32, 16, False, "pallas"),
    ("tpu", jnp.bfloat16, 16, True, "xla"),
    ("cpu", jnp.bfloat16, 16, False, "blocked"),
    ("cpu", jnp.float32, 1, False, "xla"),
    ("cpu", jnp.float32, 16, True, "xla"),
])
def test_auto_picks_the_fastest_fitting_backend(monkeypatch, platform, dtype, query_len, dense, expected):
  monkeypatch.setattr(attention, "_target_platform", lambda mesh: platform)
  q = jnp.zeros((1, query_len, 2, 96), dtype)
  k = jnp.zeros((1, 16, 2, 96), dtype)
  mask = attention.causal_mask(query_len, 16) if dense else attention.SelfAttentionMask()
  assert attention.auto_impl(q, k, mask) == expected


def test_auto_falls_back_to_xla_when_cudnn_refuses(monkeypatch):
  """On this CPU, pretending to compile for a GPU makes "auto" pick cuDNN, whose call then refuses: the result is
  XLA attention, with a warning that says why."""
  monkeypatch.setattr(attention, "_target_platform", lambda mesh: "gpu")
  q, k, v = _qkv((1, 16, 2, 16), jnp.bfloat16)
  with pytest.warns(UserWarning, match="cuDNN flash attention is unavailable"):
    out = attention.dot_product_attention(q, k, v, attention.SelfAttentionMask(), impl="auto")
  chex.assert_trees_all_equal(out, attention.xla_attention(q, k, v, attention.SelfAttentionMask()))


@pytest.mark.parametrize("impl", ["auto", "xla", "blocked", "pallas"])
def test_heads_major_keys_give_the_same_attention(impl):
  """A KV cache hands the attention keys and values [B, H, T, D] with a dense decoding mask (queries shorter than
  keys): every backend that runs on the CPU routes them to XLA's attention read as they lie, with the result of
  [B, T, H, D] keys."""
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(2, 3, 4, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, 7, 4, 8)), jnp.float32) for _ in range(2))
  mask = jnp.asarray(rng.random((2, 1, 3, 7)) < 0.7)
  ref = attention.dot_product_attention(q, k, v, mask, "xla")
  got = attention.dot_product_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask, impl, kv_layout="bhtd")
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="kv_layout"):
    attention.dot_product_attention(q, k, v, mask, impl, kv_layout="bthd ")
