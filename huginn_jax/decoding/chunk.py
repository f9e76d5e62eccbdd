"""One forward pass of a chunk of tokens against the KV cache: a prompt, one decoded token, or a draft to verify.

The model's own code runs the chunk (``Huginn.run_prelude``, ``iterate``, ``Huginn.head``); this module only tells
each layer where its keys and values live (``ChunkSlots``) and, with an exit criterion, watches the recurrence
(``ExitObserver``). Each layer first writes its new keys/values into its cache slot, then attends over the whole
slot with a mask (causal, and for core slots: only tokens that wrote the slot), so shapes stay static.

The core runs at most ``num_steps`` iterations. With an exit criterion every row stops on its own: once it exits,
its state, its cache entries and its iteration count are frozen (the row is decoded as if it were alone in the
batch), and the loop ends when every row has exited.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from huginn_jax.decoding import cache as cache_lib
from huginn_jax.decoding.exit_criteria import ExitCriterion
from huginn_jax.model import Huginn, iterate

Array = jax.Array


class ChunkOutput(NamedTuple):
  logits: Array  # [B, V] at ``last`` (or [B, C, V] with all_logits) float32
  latents: Array  # [B, C, d] final state after ln_f (the original's ``latent_states``)
  state: Array  # [B, C, d] final core state before ln_f
  steps: Array  # [B] core iterations run for each row
  cache: cache_lib.KVCache


@dataclasses.dataclass(frozen=True)
class _Slot:
  """A ``layers.KVSlot``: one cache slot written at the chunk's positions and read back whole."""

  slot: Any  # int or traced int32
  chunk: "ChunkSlots"
  core: tuple | None = None  # (step, j) for a core layer: read per the strategy, mask by which tokens wrote it

  def update(self, cache: cache_lib.KVCache, k: Array, v: Array):
    c = self.chunk
    cache = cache_lib.write_kv(cache, self.slot, c.start, k, v, c.gate)
    if self.core is None:
      keys, values = cache_lib.read_slot(cache, self.slot)
      mask = c.causal
    else:
      keys, values = cache_lib.read_core_kv(cache, c.layout, *self.core, c.seen)
      mask = c.causal & cache_lib.core_visible(c.layout, cache.depth, self.slot, c.seen)[:, None, :]
    return cache, keys, values, mask[:, None]


@dataclasses.dataclass(frozen=True)
class ChunkSlots:
  """The ``model.CacheSlots`` of a chunk at positions start[b] + (0..C-1): the slot of every layer by ``layout``."""

  layout: cache_lib.CacheLayout
  start: Array  # [B]
  length: int
  causal: Array  # [B, C, T] causal visibility of the cache positions
  seen: Array  # [B] positions in the cache once this chunk is written (the lookup rules look at them all)
  gate: Array  # [B] rows that compute

  def prelude(self, i: int) -> _Slot:
    return _Slot(self.layout.prelude_slot(i), self)

  def core(self, step, j: int) -> _Slot:
    return _Slot(self.layout.core_slot(step, j), self, (step, j))

  def coda(self, i: int) -> _Slot:
    return _Slot(self.layout.coda_slot(i), self)

  def enter_step(self, cache: cache_lib.KVCache, step) -> cache_lib.KVCache:
    return cache_lib.set_depth(cache, self.start, self.length, step + 1, self.gate)

  def gated(self, gate: Array) -> "ChunkSlots":
    return dataclasses.replace(self, gate=gate)


class ExitState(NamedTuple):
  exited: Array  # [B] bool
  steps: Array  # [B] int32 iterations each row ran (num_steps until it exits)
  criterion: Any  # the criterion's own state
  logits: Array | None  # [B, V] logits of each row's exit step (logit criteria), else None


@dataclasses.dataclass(frozen=True)
class ExitObserver:
  """A ``model.StepObserver`` that tests ``criterion`` after each iteration and freezes the rows that exit.

  Logit criteria decode the state through the head (writing the coda's cache slots) and, with ``keep_logits``,
  carry each row's exit-step logits out of the loop, so the head need not run again.
  """

  model: Huginn
  slots: ChunkSlots
  positions: Array
  criterion: ExitCriterion
  threshold: Array
  num_steps: int
  valid: Array  # [B, C]
  last: Array  # [B]
  keep_logits: bool

  def init(self, s0: Array) -> ExitState:
    active, batch, vocab = self.slots.gate, s0.shape[0], self.model.config.vocab_size
    logits = jnp.zeros((batch, vocab), jnp.float32) if self.keep_logits else None
    return ExitState(~active, jnp.where(active, jnp.int32(self.num_steps), 0),
                     self.criterion.init(batch, vocab, s0), logits)

  def running(self, st: ExitState) -> Array:
    return ~st.exited

  def update(self, st: ExitState, step: Array, s: Array, cache):
    running = ~st.exited
    logits = None
    if self.criterion.needs_logits:
      _, logits, cache = self.model.head(s, self.positions, None, cache, self.slots.gated(running), last=self.last)
    crit, values = self.criterion.update(st.criterion, latents=s, logits=logits, valid=self.valid)
    new_exit = self.criterion.exits(values, self.threshold) & running
    kept = jnp.where(running[:, None], logits, st.logits) if self.keep_logits else None
    return ExitState(st.exited | new_exit, jnp.where(new_exit, step + 1, st.steps), crit, kept), cache

  def finished(self, st: ExitState) -> Array:
    return jnp.all(st.exited)


def run_chunk(model: Huginn, layout: cache_lib.CacheLayout, cache: cache_lib.KVCache, tokens: Array, start: Array,
              *, num_steps: int, active: Array, valid: Array | None = None, last: Array | None = None,
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
  slots = ChunkSlots(layout, start, length, causal, start + length, active)

  e, cache = model.run_prelude(tokens, positions, None, cache, slots)
  e = e if embed_mix is None else embed_mix(e)
  if init_state is None:
    s0 = model.initial_state(e, key, init_scale)
  else:
    s0 = jnp.broadcast_to(init_state.astype(e.dtype), e.shape)

  observer = None
  if criterion is not None:
    observer = ExitObserver(model, slots, positions, criterion, threshold, num_steps, valid, last,
                            keep_logits=criterion.needs_logits and not all_logits and num_steps > 0)
  s, cache, observed = iterate(model.core, s0, e, positions, None, num_steps, cache=cache, slots=slots,
                               observer=observer)
  if observer is None:
    steps = jnp.where(active, jnp.asarray(num_steps, jnp.int32), 0)
  else:
    steps = observed.steps
    if observer.keep_logits:
      return ChunkOutput(logits=observed.logits, latents=model.ln_f(s), state=s, steps=steps, cache=cache)

  latents, logits, cache = model.head(s, positions, None, cache, slots, last=None if all_logits else last)
  return ChunkOutput(logits=logits, latents=latents, state=s, steps=steps, cache=cache)
