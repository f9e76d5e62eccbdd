"""One forward pass of a chunk of tokens against the KV cache: a prompt, one decoded token, or a draft to verify.

It uses the model's own pieces (``Attention.qkv``/``out``, ``dot_product_attention``, ``SandwichBlock.mlp_part``,
norms, ``Core.inject``, ``Huginn.embed``), so the math is that of ``forward``; only the keys and values come from
the cache. Each layer first writes its new keys/values into its cache slot, then attends over the whole slot
with a mask (causal, and for core slots: only tokens that wrote the slot), so shapes stay static.

The core runs in a ``lax.while_loop`` of at most ``num_steps`` iterations. With an exit criterion every row
stops on its own: once it exits, its state, its cache entries and its iteration count are frozen (the row is
decoded as if it were alone in the batch), and the loop ends when every row has exited.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from huginn_jax.decoding import cache as cache_lib
from huginn_jax.decoding.exit_criteria import ExitCriterion
from huginn_jax.layers import dot_product_attention
from huginn_jax.model import Huginn

Array = jax.Array


class ChunkOutput(NamedTuple):
  logits: Array  # [B, V] at ``last`` (or [B, C, V] with all_logits) float32
  latents: Array  # [B, C, d] final state after ln_f (the original's ``latent_states``)
  state: Array  # [B, C, d] final core state before ln_f
  steps: Array  # [B] core iterations run for each row
  cache: cache_lib.KVCache


def _cached_block(block, x, positions, cache, slot, start, gate, mask, read=None):
  """A SandwichBlock whose attention writes its keys/values to ``slot`` and reads them back from the cache."""
  q, k, v = block.attn.qkv(block.norm_1(x), positions)
  cache = cache_lib.write_kv(cache, slot, start, k, v, gate)
  keys, values = read(cache) if read is not None else cache_lib.read_slot(cache, slot)
  y = dot_product_attention(q, keys, values, mask[:, None], block.attn.impl)
  x = block.norm_2(x + block.attn.out(y))
  return block.mlp_part(x), cache


def _gather_last(x: Array, last: Array) -> Array:
  """x [B, C, ...] at position last[b] of each row -> [B, ...]."""
  return jnp.take_along_axis(x, last.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]


def _head(model: Huginn, layout, cache, state, positions, start, gate, causal, last, all_logits: bool):
  """ln_f -> coda (cached) -> ln_f -> tied head. Returns (latents after the first ln_f, logits, cache)."""
  latents = model.ln_f(state)
  x = latents
  for i, block in enumerate(model.coda):
    x, cache = _cached_block(block, x, positions, cache, layout.coda_slot(i), start, gate, causal)
  x = model.ln_f(x)
  if not all_logits:
    x = _gather_last(x, last)
  logits = x @ model.wte[...].astype(x.dtype).T
  return latents, logits.astype(jnp.float32), cache


def run_chunk(model: Huginn, layout: cache_lib.CacheLayout, cache: cache_lib.KVCache, tokens: Array, start: Array,
              *, num_steps, active: Array, valid: Array | None = None, last: Array | None = None,
              init_state: Array | None = None, key: Array | None = None, init_scale: float = 0.0,
              criterion: ExitCriterion | None = None, threshold: Array | None = None,
              all_logits: bool = False, embed_mix: Callable[[Array], Array] | None = None) -> ChunkOutput:
  """Runs tokens [B, C] at positions start[b] + (0..C-1) through the model, reading and filling the cache.

  ``active`` [B]: rows to compute (others write nothing and report 0 steps). ``valid`` [B, C]: real tokens (the
  rest is right padding, ignored by latent criteria). ``last`` [B]: the position in the chunk whose logits are
  returned and tested by logit criteria (default C - 1). ``init_state``: the initial core state, broadcast to
  [B, C, d]; default a fresh one from ``key`` and ``init_scale`` (zeros at scale 0). ``embed_mix``: applied to the
  prelude's output before it is injected into the core (the diffusion-style sampler's moving average of embeddings).
  """
  batch, length = tokens.shape
  positions = start[:, None] + jnp.arange(length, dtype=jnp.int32)[None]
  max_len = cache.depth.shape[1]
  causal = jnp.arange(max_len)[None, None, :] <= positions[:, :, None]  # [B, C, T]
  valid = jnp.ones((batch, length), bool) if valid is None else valid
  last = jnp.full((batch,), length - 1, jnp.int32) if last is None else last

  x = model.embed(tokens)
  for i, block in enumerate(model.prelude):
    x, cache = _cached_block(block, x, positions, cache, layout.prelude_slot(i), start, active, causal)
  e = x if embed_mix is None else embed_mix(x)
  if init_state is None:
    s0 = model.initial_state(e, key, init_scale)
  else:
    s0 = jnp.broadcast_to(init_state.astype(e.dtype), e.shape)

  seen = start + length  # positions in the cache once this chunk is written (the lookup rules look at them all)

  def core_step(step, s, cache, running):
    cache = cache_lib.set_depth(cache, start, length, step + 1, running)
    h = model.core.inject(s, e)
    for j, block in enumerate(model.core.layers):
      slot = layout.core_slot(step, j)
      mask = causal & cache_lib.core_visible(layout, cache.depth, slot, seen)[:, None, :]
      read = lambda c, j=j: cache_lib.read_core_kv(c, layout, step, j, seen)  # noqa: E731
      h, cache = _cached_block(block, h, positions, cache, slot, start, running, mask, read)
    return jnp.where(running[:, None, None], h, s), cache

  if criterion is None:
    def body(step, carry):
      s, cache = carry
      return core_step(step, s, cache, active)
    s, cache = jax.lax.fori_loop(0, num_steps, body, (s0, cache))
    steps = jnp.where(active, jnp.asarray(num_steps, jnp.int32), 0)
  else:
    # Logit criteria carry the logits of each row's exit step out of the loop, so the head need not run again.
    carry_logits = criterion.needs_logits and not all_logits and num_steps > 0
    logits0 = jnp.zeros((batch, model.config.vocab_size), jnp.float32) if carry_logits else None
    crit_state = criterion.init(batch, model.config.vocab_size, s0)
    carry = (jnp.int32(0), s0, cache, ~active, jnp.where(active, jnp.int32(num_steps), 0), crit_state, logits0)

    def cond(carry):
      step, _, _, exited, *_ = carry
      return (step < num_steps) & ~jnp.all(exited)

    def body(carry):
      step, s, cache, exited, steps, crit_state, kept = carry
      running = ~exited
      s_new, cache = core_step(step, s, cache, running)
      logits = None
      if criterion.needs_logits:
        _, logits, cache = _head(model, layout, cache, s_new, positions, start, running, causal, last, False)
      crit_state, values = criterion.update(crit_state, latents=s_new, logits=logits, valid=valid)
      new_exit = criterion.exits(values, threshold) & running
      steps = jnp.where(new_exit, step + 1, steps)
      if carry_logits:
        kept = jnp.where(running[:, None], logits, kept)
      return step + 1, s_new, cache, exited | new_exit, steps, crit_state, kept

    _, s, cache, _, steps, _, kept = jax.lax.while_loop(cond, body, carry)
    if carry_logits:
      return ChunkOutput(logits=kept, latents=model.ln_f(s), state=s, steps=steps, cache=cache)

  latents, logits, cache = _head(model, layout, cache, s, positions, start, active, causal, last, all_logits)
  return ChunkOutput(logits=logits, latents=latents, state=s, steps=steps, cache=cache)
