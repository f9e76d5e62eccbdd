"""Huginn as Flax NNX modules: prelude, recurrent core (adapter + core layers), coda, tied head.

Every layer takes an optional KV cache and slots in it (as the Gemma transformers do): without them it is the
training and ``forward`` path, with them it is decoding (``huginn_jax.decoding.chunk``); the math is the same code.

The depth recurrence is ``iterate``, the one loop over the core: a ``jax.lax.fori_loop`` (a scan when the count
is a Python int, so it is differentiable; a while loop when it is traced, so one compilation serves every
count), a masked scan of static length when a traced count must be differentiated, or, with a ``StepObserver``
(exit criteria, per-step analyses), a while loop that may stop early.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from huginn_jax import config as config_lib
from huginn_jax.layers import EMBED_ACT, PROJECT_NAME, KVSlot, RMSNorm, SandwichBlock, normal, param, project
from huginn_jax.sharding import with_logical_constraint

VOCAB_ACT = ("act_batch", "act_seq", "act_vocab")

Array = jax.Array


class CacheSlots(Protocol):
  """Where each layer of a chunk decoded against a KV cache keeps its keys and values (built by
  ``huginn_jax.decoding.chunk``). ``gate`` [B]: the rows that compute (the others write nothing)."""

  gate: Array

  def prelude(self, i: int) -> KVSlot: ...
  def core(self, step, j: int) -> KVSlot: ...
  def coda(self, i: int) -> KVSlot: ...
  def enter_step(self, cache: Any, step) -> Any:
    """The cache once the gated rows have started core iteration ``step`` (0-based)."""
  def gated(self, gate: Array) -> "CacheSlots":
    """The same slots for the rows in ``gate`` only."""


def _blocks(blocks, x: Array, positions: Array, mask, cache, slot_of) -> tuple[Array, Any]:
  """Applies blocks in order, block i reading and writing ``slot_of(i)`` of the cache when ``slot_of`` is given."""
  for i, block in enumerate(blocks):
    x, cache = block(x, positions, mask, cache, None if slot_of is None else slot_of(i))
  return x, cache


class Core(nnx.Module):
  """One recurrence step: ``s <- layers(adapter(concat([s, e])))``. The adapter takes state columns first."""

  def __init__(self, config, *, init_std: float, out_std: float, rngs: nnx.Rngs | None = None):
    d = config.d_model
    self.adapter = param(rngs, normal(init_std), (2 * d, d), jnp.dtype(config.param_dtype), ("adapter_in", "embed"))
    self.layers = nnx.List([SandwichBlock(config, init_std=init_std, out_std=out_std, rngs=rngs)
                            for _ in range(config.n_layers_core)])

  def inject(self, s: Array, e: Array) -> Array:
    return project("...i,id->...d", jnp.concatenate([s, e], axis=-1), self.adapter[...])

  def __call__(self, s: Array, e: Array, positions: Array, mask, cache: Any = None, slots: CacheSlots | None = None,
               step=None) -> tuple[Array, Any]:
    """(new state, cache); with ``slots``, layer j uses the cache slot of core layer j at iteration ``step``."""
    slot_of = None if slots is None else (lambda j: slots.core(step, j))
    return _blocks(self.layers, self.inject(s, e), positions, mask, cache, slot_of)


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
    return with_logical_constraint(e * jnp.asarray(config_lib.embed_scale(self.config), self.compute_dtype), EMBED_ACT)

  def run_prelude(self, tokens: Array, positions: Array, mask, cache: Any = None,
                  slots: CacheSlots | None = None) -> tuple[Array, Any]:
    """(e, cache): the embedding through the prelude; ``e`` is injected at every iteration of the core."""
    return _blocks(self.prelude, self.embed(tokens), positions, mask, cache, None if slots is None else slots.prelude)

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

  def head(self, s: Array, positions: Array, mask, cache: Any = None, slots: CacheSlots | None = None,
           last: Array | None = None) -> tuple[Array, Array, Any]:
    """(latents, logits, cache): latents = ln_f(s); coda; ln_f again; tied head in the compute dtype -> f32.

    ``last`` [B]: only the logits at that position of each row ([B, V] instead of [B, S, V])."""
    latents, x, cache = self.run_coda(s, positions, mask, cache, slots)
    if last is not None:
      x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    return latents, self.logits(x), cache

  def run_coda(self, s: Array, positions: Array, mask, cache: Any = None,
               slots: CacheSlots | None = None) -> tuple[Array, Array, Any]:
    """(latents = ln_f(s), the coda's output after ln_f, cache): ``head`` but the vocabulary projection."""
    latents = self.ln_f(s)
    x, cache = _blocks(self.coda, latents, positions, mask, cache, None if slots is None else slots.coda)
    return latents, self.ln_f(x), cache

  def logits(self, x: Array) -> Array:
    """The tied head: x @ wte.T in the compute dtype, returned in float32."""
    logits = project("...d,vd->...v", x, self.wte[...]).astype(jnp.float32)
    return with_logical_constraint(logits, VOCAB_ACT) if logits.ndim == 3 else logits


REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    # project's 16-bit CPU products are a custom VJP, which the dots policies do not see as dots: saved by name.
    "dots_saveable": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_saveable, jax.checkpoint_policies.save_only_these_names(PROJECT_NAME)),
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(PROJECT_NAME)),
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


class StepObserver(Protocol):
  """Watches the recurrence after every iteration (exit tests, per-step analyses). All methods are traced."""

  def init(self, s0: Array) -> Any:
    """The observer's carry before the first iteration."""
  def running(self, observed: Any) -> Array | None:
    """[B] rows that still iterate (the others keep their state and write nothing), or None for all."""
  def update(self, observed: Any, step: Array, s: Array, cache: Any) -> tuple[Any, Any]:
    """(observed, cache) after iteration ``step`` (0-based) produced the state ``s``."""
  def finished(self, observed: Any) -> Array:
    """Scalar bool: stop before ``num_steps`` iterations."""


class Recurrence(NamedTuple):
  state: Array  # [B, S, d] the core state after the last iteration (before ln_f)
  cache: Any = None  # the KV cache, when iterating against one
  observed: Any = None  # the observer's carry, when there is one


class _Loop(NamedTuple):
  step: Array  # iterations done
  state: Array
  cache: Any
  observed: Any


def iterate(core: Core, s: Array, e: Array, positions: Array, mask, num_steps: int | Array, *,
            max_steps: int | None = None, remat_policy: str = "none", cache: Any = None,
            slots: CacheSlots | None = None, observer: StepObserver | None = None) -> Recurrence:
  """Applies the core ``num_steps`` times to the state ``s`` with ``e`` injected at every step: the one recurrence
  loop of the package (training, ``forward``, cached decoding with exits, per-step analyses).

  ``num_steps`` may be a Python int or a traced int32 scalar. With ``max_steps`` the loop is a scan of that static
  length whose iterations past ``num_steps`` are skipped (``lax.cond``), which reverse-mode autodiff supports even
  for a traced count. ``remat_policy`` wraps one iteration in ``jax.checkpoint`` with that policy. ``cache`` and
  ``slots``: decode against a KV cache (rows outside ``slots.gate`` keep their state). ``observer``: a
  ``StepObserver`` called after every iteration, which may freeze rows and end the loop early (a while loop).
  """
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f"Unknown remat_policy {remat_policy!r}; choose one of {sorted(REMAT_POLICIES)}.")
  if observer is not None and max_steps is not None:
    raise ValueError("iterate: an observer runs a while loop, which cannot be differentiated; drop max_steps.")
  graphdef, state = nnx.split(core)
  # Weights are cast to the compute dtype once, here, not in every iteration (XLA does not hoist the casts out of a
  # differentiated loop: a pass over all core weights per iteration, forward and remat); gradients still reach the
  # original weights and add up across iterations in their dtype (float32).
  cast = jax.lax.stop_gradient(cast_weights(state, s.dtype))

  def step(state, i, s, cache, gate):
    used = jax.tree.map(lambda w, c: _precast(w.dtype.name, w, c) if c.dtype != w.dtype else w, state, cast)
    view = None if slots is None else (slots if gate is None else slots.gated(gate))
    if view is not None:
      cache, gate = view.enter_step(cache, i), view.gate
    s_new, cache = nnx.merge(graphdef, used)(s, e, positions, mask, cache, view, i)
    if gate is not None:
      s_new = jnp.where(gate[:, None, None], s_new, s)
    return s_new, cache

  if remat_policy != "none":
    step = jax.checkpoint(step, policy=REMAT_POLICIES[remat_policy])

  if observer is not None:
    def cond(loop: _Loop):
      return (loop.step < num_steps) & ~observer.finished(loop.observed)

    def body(loop: _Loop):
      s, cache = step(state, loop.step, loop.state, loop.cache, observer.running(loop.observed))
      observed, cache = observer.update(loop.observed, loop.step, s, cache)
      return _Loop(loop.step + 1, s, cache, observed)

    loop = jax.lax.while_loop(cond, body, _Loop(jnp.int32(0), s, cache, observer.init(s)))
    return Recurrence(loop.state, loop.cache, loop.observed)

  if max_steps is None:
    s, cache = jax.lax.fori_loop(0, num_steps, lambda i, c: step(state, i, *c, None), (s, cache))
    return Recurrence(s, cache)

  def masked(c, i):
    return jax.lax.cond(i < num_steps, lambda c: step(state, i, *c, None), lambda c: c, c), None

  s, cache = jax.lax.scan(masked, (s, cache), jnp.arange(max_steps))[0]
  return Recurrence(s, cache)
