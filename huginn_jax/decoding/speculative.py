"""Self-speculative decoding: draft with few core iterations, verify with many, keep the agreeing prefix.

Each round drafts ``lookahead`` tokens one at a time with ``draft_steps`` iterations, then runs the last accepted
token and the first lookahead - 1 drafts as one chunk with ``num_steps`` iterations (overwriting the drafts' cache
entries). The verifier's argmax at each position is compared with the next draft: the drafts before the first
mismatch are accepted, followed by a token sampled from the verifier at the mismatch; when all agree, all drafts
are accepted and no extra token is added, as in the original. Each token records the iterations behind it:
``num_steps`` for the verifier's choices (an accepted draft that is the verifier's argmax, or the token taken at the
mismatch), ``draft_steps`` for a draft that passed only the relaxed test. Rows accept independently (each has its own
position), and the whole loop is one ``lax.while_loop``. Unlike the original, which may return a few tokens more
than asked (its last round is not cut) and pads rows of a batch to a common acceptance, every row gets exactly
``max_new_tokens`` tokens (or fewer after a stop id).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from huginn_jax.decoding import sampling
from huginn_jax.decoding.chunk import run_chunk

Array = jax.Array


class SpecState(NamedTuple):
  round: Array  # scalar int32
  tokens: Array  # [B, N + lookahead] generated tokens (pad beyond count)
  steps: Array  # [B, N + lookahead] core iterations behind each token (0 beyond count)
  count: Array  # [B] tokens generated so far
  last: Array  # [B] last generated token, not yet run through the model
  pos: Array  # [B] its position
  done: Array  # [B]
  cache: object
  seen: Array | None  # [B, V] token ids seen (repetition penalty) or None


def _write_at(buffer: Array, start: Array, new: Array, gate: Array) -> Array:
  def one(row, s, n, g):
    old = jax.lax.dynamic_slice(row, (s,), n.shape)
    return jax.lax.dynamic_update_slice(row, jnp.where(g, n, old), (s,))
  return jax.vmap(one)(buffer, start, new, gate)


def speculative_loop(model, layout, state: SpecState, key: Array, *, num_steps: int, draft_steps: int,
                     lookahead: int, max_new_tokens: int, init_scale: float,
                     choose: Callable[[Array, Array, Array | None], Array], stop_ids: Array, pad_id: int,
                     verification_threshold: Array | None = None, emit: Callable | None = None) -> SpecState:
  """Runs rounds until every row has ``max_new_tokens`` tokens or produced a stop id.

  A draft passes verification when it is the verifier's argmax, or, with ``verification_threshold`` t < 1, when the
  verifier gives it at least t times the probability of its top token (the original's relaxed test).
  """
  length = lookahead
  idx = jnp.arange(length)[None]

  def cond(st: SpecState):
    return ~jnp.all(st.done)

  def body(st: SpecState):
    batch = st.last.shape[0]
    active = ~st.done
    key_round = jax.random.fold_in(key, st.round)
    k_init, k_draft, k_final = jax.random.split(key_round, 3)

    def draft(c, carry):
      tok, cache, drafted, seen = carry
      out = run_chunk(model, layout, cache, tok[:, None], st.pos + c, num_steps=draft_steps, active=active,
                      key=jax.random.fold_in(k_init, c), init_scale=init_scale)
      nxt = choose(out.logits, jax.random.fold_in(k_draft, c), seen)
      if seen is not None:
        seen = sampling.mark_seen(seen, nxt[:, None], active[:, None])
      return nxt, out.cache, drafted.at[:, c].set(nxt), seen

    drafted = jnp.zeros((batch, length), jnp.int32)
    _, cache, drafted, _ = jax.lax.fori_loop(0, length, draft, (st.last, st.cache, drafted, st.seen))

    chunk = jnp.concatenate([st.last[:, None], drafted[:, :-1]], axis=1)
    out = run_chunk(model, layout, cache, chunk, st.pos, num_steps=num_steps, active=active,
                    key=jax.random.fold_in(k_init, length), init_scale=init_scale, all_logits=True)
    is_argmax = jnp.argmax(out.logits, axis=-1) == drafted
    if verification_threshold is None:
      mismatch = ~is_argmax
    else:
      probs = jax.nn.softmax(out.logits, axis=-1)
      drafted_probs = jnp.take_along_axis(probs, drafted[..., None], axis=-1)[..., 0]
      mismatch = drafted_probs < verification_threshold * jnp.max(probs, axis=-1)
    first = jnp.where(jnp.any(mismatch, axis=1), jnp.argmax(mismatch, axis=1), length)
    seen_final = None if st.seen is None else sampling.mark_seen(st.seen, drafted, idx < first[:, None])
    at = jnp.minimum(first, length - 1)
    final = choose(jnp.take_along_axis(out.logits, at[:, None, None], axis=1)[:, 0], k_final, seen_final)
    new = jnp.where(idx < first[:, None], drafted, jnp.where(idx == first[:, None], final[:, None], pad_id))
    n_new = jnp.where(first < length, first + 1, length)
    stop = jnp.any(new[..., None] == stop_ids, axis=-1) & (idx < n_new[:, None])
    has_stop = jnp.any(stop, axis=1)
    n_new = jnp.where(has_stop, jnp.argmax(stop, axis=1) + 1, n_new)
    n_new = jnp.where(active, n_new, 0)
    new = jnp.where(idx < n_new[:, None], new, pad_id)
    # A draft that passed only the relaxed test is the draft's token, not the verifier's: it cost draft_steps.
    new_steps = jnp.where((idx < first[:, None]) & ~is_argmax, draft_steps, num_steps)
    new_steps = jnp.where(idx < n_new[:, None], new_steps, 0).astype(jnp.int32)
    if emit is not None:  # the last round may overshoot max_new_tokens; those tokens are not reported
      emit(new, jnp.minimum(n_new, max_new_tokens - st.count))

    tokens = _write_at(st.tokens, st.count, new, active)
    steps = _write_at(st.steps, st.count, new_steps, active)
    last = jnp.take_along_axis(new, jnp.maximum(n_new - 1, 0)[:, None], axis=1)[:, 0]
    seen = None if st.seen is None else sampling.mark_seen(st.seen, new, idx < n_new[:, None])
    count = st.count + n_new
    done = st.done | has_stop | (count >= max_new_tokens)
    return SpecState(st.round + 1, tokens, steps, count, jnp.where(active, last, st.last), st.pos + n_new, done,
                     out.cache, seen)

  return jax.lax.while_loop(cond, body, state)
