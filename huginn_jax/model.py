"""Huginn as Flax NNX modules: prelude, recurrent core (adapter + core layers), coda, tied head.

The depth recurrence is ``iterate``: a ``jax.lax.fori_loop`` over iterations of the core (a scan when the count
is a Python int, so it is differentiable; a while loop when it is traced, so one compilation serves every
count), or a masked scan of static length when a traced count must be differentiated.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from huginn_jax import config as config_lib
from huginn_jax.layers import RMSNorm, SandwichBlock, normal, param

Array = jax.Array


class Core(nnx.Module):
  """One recurrence step: ``s <- layers(adapter(concat([s, e])))``. The adapter takes state columns first."""

  def __init__(self, config, *, init_std: float, out_std: float, rngs: nnx.Rngs | None = None):
    d = config.d_model
    self.adapter = param(rngs, normal(init_std), (2 * d, d), jnp.dtype(config.param_dtype), ("adapter_in", "embed"))
    self.layers = nnx.List([SandwichBlock(config, init_std=init_std, out_std=out_std, rngs=rngs)
                            for _ in range(config.n_layers_core)])

  def inject(self, s: Array, e: Array) -> Array:
    return jnp.concatenate([s, e], axis=-1) @ self.adapter[...].astype(s.dtype)

  def __call__(self, s: Array, e: Array, positions: Array, mask: Array | None) -> Array:
    x = self.inject(s, e)
    for layer in self.layers:
      x = layer(x, positions, mask)
    return x


class Huginn(nnx.Module):
  """The whole network. ``forward`` in ``huginn_jax.api`` drives it; decoding code calls the pieces."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs | None = None):
    self.config = config
    d, dt = config.d_model, jnp.dtype(config.param_dtype)
    std = config_lib.init_std(config)
    depth = config.n_layers_prelude + config.n_layers_coda + config.n_layers_core * config.mean_recurrence
    out_std = std / math.sqrt(2 * depth)
    block = lambda: SandwichBlock(config, init_std=std, out_std=out_std, rngs=rngs)  # noqa: E731
    self.wte = param(rngs, normal(std), (config.vocab_size, d), dt, ("vocab", "embed"))
    self.prelude = nnx.List([block() for _ in range(config.n_layers_prelude)])
    self.core = Core(config, init_std=std, out_std=out_std, rngs=rngs)
    self.coda = nnx.List([block() for _ in range(config.n_layers_coda)])
    self.ln_f = RMSNorm(d, eps=config.norm_eps, param_dtype=dt, rngs=rngs)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.config.compute_dtype)

  def embed(self, tokens: Array) -> Array:
    """``wte[tokens] * sqrt(d)`` in the compute dtype."""
    e = jnp.take(self.wte[...], tokens, axis=0).astype(self.compute_dtype)
    return e * jnp.asarray(config_lib.embed_scale(self.config), self.compute_dtype)

  def run_prelude(self, tokens: Array, positions: Array, mask: Array | None) -> Array:
    x = self.embed(tokens)
    for block in self.prelude:
      x = block(x, positions, mask)
    return x

  def initial_state(self, e: Array, key: Array | None, init_scale: float) -> Array:
    """Truncated normal (+-3 std) of std ``sqrt(2/(5d)) * init_scale``, times ``sqrt(d)``; zeros at scale 0."""
    if init_scale == 0:
      return jnp.zeros_like(e)
    if key is None:
      raise ValueError("A random initial state needs key=jax.random.key(...); or pass initial_state=..., "
                       "or init_scale=0.0 for a zero state.")
    std = config_lib.init_std(self.config) * init_scale
    z = jax.random.truncated_normal(key, -3.0, 3.0, e.shape, jnp.float32)
    return (z * std * config_lib.embed_scale(self.config)).astype(e.dtype)

  def head(self, s: Array, positions: Array, mask: Array | None) -> tuple[Array, Array]:
    """Returns (latents, logits): latents = ln_f(s); coda; ln_f again; tied head in the compute dtype -> f32."""
    latents, x = self.run_coda(s, positions, mask)
    return latents, self.logits(x)

  def run_coda(self, s: Array, positions: Array, mask: Array | None) -> tuple[Array, Array]:
    """(latents = ln_f(s), the coda's output after ln_f): everything of ``head`` but the vocabulary projection."""
    latents = self.ln_f(s)
    x = latents
    for block in self.coda:
      x = block(x, positions, mask)
    return latents, self.ln_f(x)

  def logits(self, x: Array) -> Array:
    """The tied head: x @ wte.T in the compute dtype, returned in float32."""
    return (x @ self.wte[...].astype(x.dtype).T).astype(jnp.float32)


REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def _needs_cast(w: Array, dtype) -> bool:
  return jnp.issubdtype(w.dtype, jnp.floating) and w.dtype != dtype


def cast_weights(tree, dtype):
  """Floating weights in the compute dtype, which is what every layer casts them to where it uses them: done once
  before a loop, this spares a pass over the weights per iteration."""
  return jax.tree.map(lambda w: w.astype(dtype) if _needs_cast(w, dtype) else w, tree)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _precast(dtype: str, weight: Array, cast: Array) -> Array:
  """``cast`` (``weight`` already in the compute dtype) whose gradient goes to ``weight``, in ``weight``'s dtype."""
  del dtype, weight
  return cast


def _precast_fwd(dtype, weight, cast):
  del weight
  return cast, None


def _precast_bwd(dtype, _, grad):
  return grad.astype(dtype), None


_precast.defvjp(_precast_fwd, _precast_bwd)


def iterate(core: Core, s: Array, e: Array, positions: Array, mask: Array | None, num_steps: int | Array, *,
            max_steps: int | None = None, remat_policy: str = "none") -> Array:
  """Applies the core ``num_steps`` times to the state ``s`` with ``e`` injected at every step.

  ``num_steps`` may be a Python int or a traced int32 scalar. With ``max_steps`` the loop is a scan of that static
  length whose iterations past ``num_steps`` are skipped (``lax.cond``), which reverse-mode autodiff supports even
  for a traced count. ``remat_policy`` wraps one iteration in ``jax.checkpoint`` with that policy.
  """
  graphdef, state = nnx.split(core)
  # Weights are cast to the compute dtype once, here, not in every iteration (XLA does not hoist the casts out of a
  # differentiated loop: a pass over all core weights per iteration, forward and remat); gradients still reach the
  # original weights and add up across iterations in their dtype (float32).
  cast = jax.lax.stop_gradient(cast_weights(state, s.dtype))

  def step(state, s):
    used = jax.tree.map(lambda w, c: _precast(w.dtype.name, w, c) if c.dtype != w.dtype else w, state, cast)
    return nnx.merge(graphdef, used)(s, e, positions, mask)

  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f"Unknown remat_policy {remat_policy!r}; choose one of {sorted(REMAT_POLICIES)}.")
  if remat_policy != "none":
    step = jax.checkpoint(step, policy=REMAT_POLICIES[remat_policy])

  if max_steps is None:
    return jax.lax.fori_loop(0, num_steps, lambda _, s: step(state, s), s)

  def masked(s, i):
    return jax.lax.cond(i < num_steps, lambda s: step(state, s), lambda s: s, s), None

  return jax.lax.scan(masked, s, jnp.arange(max_steps))[0]
