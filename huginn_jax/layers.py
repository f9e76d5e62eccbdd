"""The transformer pieces of Huginn as Flax NNX modules: RMSNorm, RoPE, attention, gated MLP, sandwich block.

Parameters are stored in JAX layout ([in, out] kernels, heads split out) and carry logical axis names
(``sharding_names``) that ``huginn_jax.sharding`` maps to mesh axes. ``huginn_jax.checkpoint.hf`` maps them to
and from the original's torch names and layouts.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Protocol

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
from flax import nnx

# Attention backends live in huginn_jax.attention; re-exported here, where callers first found them.
from huginn_jax.attention import NEG_INF, causal_mask, dot_product_attention  # noqa: F401
from huginn_jax.attention import _target_platform
from huginn_jax.sharding import with_logical_constraint

# Logical axis names of the activations (``huginn_jax.sharding`` maps them to mesh axes when a mesh is active).
EMBED_ACT = ("act_batch", "act_seq", "act_embed")
HEADS_ACT = ("act_batch", "act_seq", "act_heads", None)
MLP_ACT = ("act_batch", "act_seq", "act_mlp")

Array = jax.Array
Initializer = Callable[..., Array]


class KVSlot(Protocol):
  """One attention layer's place in a KV cache (``huginn_jax.decoding.chunk`` builds them).

  A layer called with a slot hands it this call's keys and values; the slot stores them in the cache and returns
  what the queries attend to. Called without one, a layer attends over its own keys (the training path).
  """

  def update(self, cache: Any, k: Array, v: Array) -> tuple[Any, Array, Array, Any]:
    """Stores k, v [B, C, H, D]; returns (cache, keys [B, H, T, D], values [B, H, T, D], mask for the queries):
    heads-major, as a KV cache keeps them."""


PROJECT_NAME = "project"  # the checkpoint name of project's 16-bit CPU products (the dots_* remat policies save it)


def project(spec: str, x: Array, w: Array) -> Array:
  """``jnp.einsum(spec, x, w)`` with the weight cast to x's dtype, the result in x's dtype: every weight matmul of
  the model goes through it.

  16-bit inputs compiled for the CPU ask XLA for a float32 result, rounded to x's dtype once after: XLA CPU then runs
  its bfloat16 GEMM kernels (twice its float32 rate on a CPU with AVX512-BF16), where asking for a bfloat16 result
  ran them at the float32 rate (benchmarks/README.md, issue 15). The products accumulate in float32 either way; the
  gradients are computed the same way (a custom VJP: reverse mode only, so ``jax.jvp`` of a 16-bit model on the CPU
  is not available). Each index of ``spec`` must appear in two of its three terms, and ``...`` only in x's and the
  output's.
  """
  w = w.astype(x.dtype)
  x_axes, w_axes, out = _terms(spec)
  if "..." in w_axes:
    raise ValueError(f"project({spec!r}): '...' may stand only for x's leading axes.")
  if "..." in spec:  # name the leading axes, as the gradient's einsums must
    lead = "ABCDEFGH"[:x.ndim - len(x_axes) + 3]
    x_axes, out = x_axes.replace("...", lead), out.replace("...", lead)
  terms = (x_axes, w_axes, out)
  if any(sum(i in t for t in terms) != 2 for i in set("".join(terms))):
    raise ValueError(f"project({spec!r}): every index must appear in exactly two of the three terms.")
  spec = f"{x_axes},{w_axes}->{out}"
  if (x.dtype.itemsize == 2 and jnp.issubdtype(x.dtype, jnp.floating)
      and _target_platform(jax.sharding.get_abstract_mesh()) == "cpu"):
    return checkpoint_name(_project_wide(spec, x, w), PROJECT_NAME)
  return jnp.einsum(spec, x, w)


def _terms(spec: str) -> tuple[str, str, str]:
  """The x, w and output terms of an einsum spec "x,w->out"."""
  inputs, out = spec.split("->")
  x_axes, w_axes = inputs.split(",")
  return x_axes, w_axes, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _project_wide(spec: str, x: Array, w: Array) -> Array:
  return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _project_wide_fwd(spec, x, w):
  return _project_wide(spec, x, w), (x, w)


def _project_wide_bwd(spec, residuals, grad):
  x, w = residuals
  x_axes, w_axes, out = _terms(spec)
  return _project_wide(f"{out},{w_axes}->{x_axes}", grad, w), _project_wide(f"{x_axes},{out}->{w_axes}", x, grad)


_project_wide.defvjp(_project_wide_fwd, _project_wide_bwd)


def param(rngs: nnx.Rngs | None, init: Initializer, shape: tuple[int, ...], dtype, axes: tuple[str | None, ...]):
  """A parameter with logical axis names; sharded lazily (by ``huginn_jax.sharding``), never eagerly."""
  assert len(axes) == len(shape), (shape, axes)
  key = rngs.params() if rngs is not None else jax.random.key(0)
  return nnx.Param(init(key, shape, dtype), out_sharding=axes, eager_sharding=False)


def normal(std: float) -> Initializer:
  return jax.nn.initializers.normal(stddev=std)


class RMSNorm(nnx.Module):
  """RMSNorm with statistics in float32, cast back to the input dtype, then times the weight."""

  def __init__(self, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs | None = None):
    self.eps = eps
    self.scale = param(rngs, jax.nn.initializers.ones, (dim,), param_dtype, ("norm",))

  def __call__(self, x: Array) -> Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
    return y.astype(x.dtype) * self.scale[...].astype(x.dtype)


def rope_angles(positions: Array, head_dim: int, base: float) -> tuple[Array, Array]:
  """cos and sin of the rotary angles, float32, shaped [..., S, 1, head_dim // 2] for broadcasting over heads."""
  inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles)[..., None, :], jnp.sin(angles)[..., None, :]


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Rotates interleaved pairs (2i, 2i+1) of each head in float32 (the original's layout, not rotate-half)."""
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
  x0, x1 = xf[..., 0], xf[..., 1]
  out = jnp.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


class Attention(nnx.Module):
  """Causal self-attention with a fused QKV projection, a per-head q/k bias added before RoPE, and RoPE."""

  def __init__(self, d_model: int, n_heads: int, head_dim: int, *, qk_bias: bool, rope_base: float, param_dtype,
               init_std: float, out_std: float, impl: str = "xla", rngs: nnx.Rngs | None = None):
    self.n_heads, self.head_dim, self.rope_base, self.impl = n_heads, head_dim, rope_base, impl
    self.wqkv = param(rngs, normal(init_std), (d_model, 3, n_heads, head_dim), param_dtype,
                      ("embed", "qkv", "heads", "head_dim"))
    self.qk_bias = (param(rngs, jax.nn.initializers.zeros, (2, n_heads, head_dim), param_dtype,
                          ("qkv", "heads", "head_dim")) if qk_bias else None)
    self.proj = param(rngs, normal(out_std), (n_heads, head_dim, d_model), param_dtype, ("heads", "head_dim", "embed"))

  def qkv(self, x: Array, positions: Array) -> tuple[Array, Array, Array]:
    """Projects x [B,S,d] to q, k, v [B,S,H,D], with the bias and RoPE applied to q and k."""
    # The split axis t after b, s: with it first, XLA CPU copied the weight into a new layout inside the loop of
    # core iterations, on every iteration (most of a batch-1 decode step; issue 15's profile).
    qkv = project("bsd,dthk->bsthk", x, self.wqkv[...])
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.qk_bias is not None:
      bias = self.qk_bias[...].astype(x.dtype)
      q, k = q + bias[0], k + bias[1]
    cos, sin = rope_angles(positions, self.head_dim, self.rope_base)
    q, k, v = apply_rope(q, cos, sin), apply_rope(k, cos, sin), v
    return tuple(with_logical_constraint(t, HEADS_ACT) for t in (q, k, v))

  def out(self, y: Array) -> Array:
    y = with_logical_constraint(y, HEADS_ACT)
    return project("bshk,hkd->bsd", y, self.proj[...])

  def __call__(self, x: Array, positions: Array, mask, cache: Any = None,
               slot: KVSlot | None = None) -> tuple[Array, Any]:
    """(output, cache). ``mask``: None, a ``SelfAttentionMask`` or a dense boolean mask (see
    ``huginn_jax.attention``); with a ``slot`` the keys, values and mask come from the cache instead."""
    q, k, v = self.qkv(x, positions)
    if slot is None:
      return self.out(dot_product_attention(q, k, v, mask, self.impl)), cache
    cache, k, v, mask = slot.update(cache, k, v)
    return self.out(dot_product_attention(q, k, v, mask, self.impl, kv_layout="bhtd")), cache


class GatedMLP(nnx.Module):
  """``proj(silu(gate) * up)`` with a fused gate|up projection."""

  def __init__(self, d_model: int, hidden: int, *, param_dtype, init_std: float, out_std: float,
               rngs: nnx.Rngs | None = None):
    self.fc = param(rngs, normal(init_std), (d_model, 2, hidden), param_dtype, ("embed", "gate_up", "mlp"))
    self.proj = param(rngs, normal(out_std), (hidden, d_model), param_dtype, ("mlp", "embed"))

  def __call__(self, x: Array) -> Array:
    h = project("bsd,dti->bsti", x, self.fc[...])  # t after b, s: see Attention.qkv
    hidden = with_logical_constraint(jax.nn.silu(h[:, :, 0]) * h[:, :, 1], MLP_ACT)
    return project("bsi,id->bsd", hidden, self.proj[...])


class SandwichBlock(nnx.Module):
  """``x = norm_2(x + attn(norm_1(x)))``; ``x = norm_4(x + mlp(norm_3(x)))``."""

  def __init__(self, config, *, init_std: float, out_std: float, rngs: nnx.Rngs | None = None):
    d, dt = config.d_model, jnp.dtype(config.param_dtype)
    norm = lambda: RMSNorm(d, eps=config.norm_eps, param_dtype=dt, rngs=rngs)  # noqa: E731
    self.norm_1 = norm()
    self.attn = Attention(d, config.n_heads, config.head_dim, qk_bias=config.qk_bias, rope_base=config.rope_base,
                          param_dtype=dt, init_std=init_std, out_std=out_std, impl=config.attention_impl, rngs=rngs)
    self.norm_2 = norm()
    self.mlp = GatedMLP(d, config.intermediate_size, param_dtype=dt, init_std=init_std, out_std=out_std, rngs=rngs)
    self.norm_3 = norm()
    self.norm_4 = norm()

  def __call__(self, x: Array, positions: Array, mask, cache: Any = None,
               slot: KVSlot | None = None) -> tuple[Array, Any]:
    """(output, cache): the cache is passed through, written and read by the attention when ``slot`` is given."""
    y, cache = self.attn(self.norm_1(x), positions, mask, cache, slot)
    return with_logical_constraint(self.mlp_part(self.norm_2(x + y)), EMBED_ACT), cache

  def mlp_part(self, x: Array) -> Array:
    """The second half of the block."""
    return self.norm_4(x + self.mlp(self.norm_3(x)))
