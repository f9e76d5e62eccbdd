"""Next-token selection: repetition penalty or DRY, then temperature, top-k, top-p, min-p, in the original's order.

Filters act on probabilities as the original's ``_sample_next_token`` does: top-k keeps probabilities >= the k-th
largest (ties kept); top-p drops every token whose cumulative probability (sorted, inclusive) exceeds p, so the
crossing token is dropped too, but the top token is always kept; min-p drops probabilities below min_p x the
largest remaining one; the rest is renormalised. The repetition penalty (HF's rule: divide positive logits,
multiply negative ones, for every token already in the sequence) comes first. Temperature 0 means greedy.

DRY ("don't repeat yourself") is the original's n-gram penalty, which it applies instead of the repetition penalty:
for every start s among the last ``lookback`` positions (s <= L - 2 in a context of length L) it counts how many
tokens read forward from s equal the context read backward from its last token (``ctx[s + i] == ctx[L - 1 - i]``,
at most ``max_match``, stopping at the end of the context); a nonzero count n with a token after it makes that
token a continuation of length n + 1. A token whose longest continuation n is at least ``allowed_length`` loses
``multiplier * base ** (n - allowed_length)`` from its logit. (This mirror-image match is the original's rule, not the
suffix match of other DRY implementations.)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
  """Which filters are on (static: each combination compiles once); their values are ``SamplingParams``."""

  greedy: bool = True
  top_k: int | None = None
  top_p: bool = False
  min_p: bool = False
  repetition_penalty: bool = False
  dry: bool = False
  dry_lookback: int = 128
  dry_max_match: int = 32

  @property
  def needs_history(self) -> bool:
    return self.repetition_penalty or self.dry


class SamplingParams(NamedTuple):
  temperature: Array
  top_p: Array
  min_p: Array
  repetition_penalty: Array
  dry_multiplier: Array = np.float32(0.0)
  dry_base: Array = np.float32(1.75)
  dry_allowed_length: Array = np.int32(2)


class History(NamedTuple):
  """What the penalties look at, per row: the set of token ids seen [B, V] (repetition penalty) and the sequence so
  far, tokens [B, T] with its length [B] (DRY). Fields a sampler does not need are None."""

  seen: Array | None
  tokens: Array | None
  length: Array | None


def make_sampling(vocab_size: int, temperature=0.0, top_k=None, top_p=None, min_p=None,
                  repetition_penalty=None, dry_multiplier=None, dry_base: float = 1.75, dry_allowed_length: int = 2,
                  dry_lookback: int = 128, dry_max_match: int = 32) -> tuple[SamplingSpec, SamplingParams]:
  """Validates the user's sampling arguments and splits them into static flags and traced values."""
  if temperature is None or temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
  if top_k is not None and not (isinstance(top_k, int) and 0 <= top_k):
    raise ValueError(f"top_k must be a non-negative int (0 or None = off), got {top_k!r}.")
  for name, value in (("top_p", top_p), ("min_p", min_p)):
    if value is not None and not 0 <= value <= 1:
      raise ValueError(f"{name} must be in [0, 1] (0 or None = off), got {value}.")
  if repetition_penalty is not None and repetition_penalty <= 0:
    raise ValueError(f"repetition_penalty must be > 0 (1 or None = off), got {repetition_penalty}.")
  rep = repetition_penalty is not None and repetition_penalty != 1.0
  dry = bool(dry_multiplier)
  if dry_multiplier is not None and dry_multiplier < 0:
    raise ValueError(f"dry_multiplier must be >= 0 (0 or None = off), got {dry_multiplier}.")
  if dry and rep:
    raise ValueError("repetition_penalty and dry_multiplier cannot be combined (the original applies DRY instead of "
                     "the repetition penalty); pass one of them.")
  if dry and not (dry_base > 0 and isinstance(dry_allowed_length, (int, np.integer)) and dry_lookback >= 1
                  and dry_max_match >= 1):
    raise ValueError(f"DRY needs dry_base > 0, an int dry_allowed_length, dry_lookback >= 1 and dry_max_match >= 1; "
                     f"got {dry_base}, {dry_allowed_length!r}, {dry_lookback}, {dry_max_match}.")
  spec = SamplingSpec(greedy=temperature == 0, top_k=min(top_k, vocab_size) if top_k else None,
                      top_p=bool(top_p), min_p=bool(min_p), repetition_penalty=rep, dry=dry,
                      dry_lookback=int(dry_lookback), dry_max_match=int(dry_max_match))
  f32 = lambda x, default: np.float32(default if x is None else x)  # noqa: E731
  params = SamplingParams(f32(temperature, 0.0), f32(top_p, 1.0), f32(min_p, 0.0), f32(repetition_penalty, 1.0),
                          f32(dry_multiplier, 0.0), f32(dry_base, 1.75), np.int32(dry_allowed_length))
  return spec, params


def apply_repetition_penalty(logits: Array, seen: Array, penalty: Array) -> Array:
  """HF's rule for tokens already seen [B, V]: positive logits / penalty, negative ones x penalty."""
  penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
  return jnp.where(seen, penalised, logits)


def dry_penalty(context: Array, length: Array, vocab_size: int, multiplier: Array, base: Array,
                allowed_length: Array, lookback: int = 128, max_match: int = 32) -> Array:
  """The amount [B, V] the original's DRY rule subtracts from each logit, given context [B, T] of length [B]."""
  batch, width = context.shape
  length = length.astype(jnp.int32)
  take = lambda idx: jnp.take_along_axis(context, jnp.clip(idx, 0, width - 1).reshape(batch, -1),  # noqa: E731
                                         axis=1).reshape(idx.shape)
  starts = length[:, None] - lookback + jnp.arange(lookback, dtype=jnp.int32)[None]  # [B, lookback]
  offsets = jnp.arange(max_match, dtype=jnp.int32)
  forward = starts[:, :, None] + offsets  # [B, lookback, max_match]
  backward = jnp.broadcast_to(length[:, None, None] - 1 - offsets, forward.shape)
  agree = (take(forward) == take(backward)) & (forward < length[:, None, None])
  matched = jnp.sum(jnp.cumprod(agree, axis=-1), axis=-1).astype(jnp.int32)  # leading run of agreement
  after = starts + matched
  counts = (starts >= 0) & (starts <= length[:, None] - 2) & (matched > 0) & (after < length[:, None])
  longest = jnp.zeros((batch, vocab_size), jnp.int32).at[jnp.arange(batch)[:, None], take(after)].max(
      jnp.where(counts, matched + 1, 0))
  excess = (longest - allowed_length).astype(jnp.float32)
  return jnp.where(longest >= allowed_length, multiplier * jnp.power(base, excess), 0.0)


def penalise(logits: Array, spec: SamplingSpec, params: SamplingParams, history: History | Array | None) -> Array:
  """Logits [B, ..., V] after the repetition penalty or DRY, each row judged by its own history."""
  if not spec.needs_history:
    return logits
  if not isinstance(history, History):  # a bare [B, V] set of seen ids
    history = History(history, None, None)
  extra = (slice(None),) + (None,) * (logits.ndim - 2)  # broadcast [B, V] over any middle axes of the logits
  if spec.repetition_penalty:
    logits = apply_repetition_penalty(logits, history.seen[extra], params.repetition_penalty)
  if spec.dry:
    penalty = dry_penalty(history.tokens, history.length, logits.shape[-1], params.dry_multiplier, params.dry_base,
                          params.dry_allowed_length, spec.dry_lookback, spec.dry_max_match)
    logits = logits.astype(jnp.float32) - penalty[extra]
  return logits


def init_history(spec: SamplingSpec, tokens: Array, valid: Array, vocab_size: int, width: int) -> History | None:
  """The history of right-padded prompts [B, S] (``valid`` marks real tokens), with room for ``width`` tokens."""
  if not spec.needs_history:
    return None
  batch = tokens.shape[0]
  seen = tokens_buf = length = None
  if spec.repetition_penalty:
    seen = mark_seen(jnp.zeros((batch, vocab_size), bool), tokens, valid)
  if spec.dry:
    tokens_buf = jnp.zeros((batch, width), jnp.int32).at[:, :tokens.shape[1]].set(jnp.where(valid, tokens, 0))
    length = jnp.sum(valid, axis=1).astype(jnp.int32)
  return History(seen, tokens_buf, length)


def top_k_filter(probs: Array, k: int) -> Array:
  kth = jax.lax.top_k(probs, k)[0][..., -1:]
  return jnp.where(probs < kth, 0.0, probs)


def top_p_filter(probs: Array, p: Array) -> Array:
  order = jnp.argsort(-probs, axis=-1)
  sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
  remove = jnp.cumsum(sorted_probs, axis=-1) > p
  remove = remove.at[..., 0].set(False)
  rows = jnp.arange(probs.shape[0])[:, None]
  removed = jnp.zeros_like(remove).at[rows, order].set(remove)
  return jnp.where(removed, 0.0, probs)


def min_p_filter(probs: Array, min_p: Array) -> Array:
  return jnp.where(probs < min_p * jnp.max(probs, axis=-1, keepdims=True), 0.0, probs)


def filtered_probs(logits: Array, spec: SamplingSpec, params: SamplingParams) -> Array:
  """The distribution [B, V] a sampled token is drawn from (temperature and filters applied, renormalised)."""
  logits = logits.astype(jnp.float32)
  logits = jnp.where(params.temperature > 0, logits / jnp.where(params.temperature > 0, params.temperature, 1.0),
                     logits)
  probs = jax.nn.softmax(logits, axis=-1)
  if spec.top_k:
    probs = top_k_filter(probs, spec.top_k)
  if spec.top_p:
    probs = top_p_filter(probs, params.top_p)
  if spec.min_p:
    probs = min_p_filter(probs, params.min_p)
  return probs / jnp.maximum(jnp.sum(probs, axis=-1, keepdims=True), 1e-10)


def next_token(logits: Array, key: Array | None, spec: SamplingSpec, params: SamplingParams,
               seen: History | Array | None = None) -> Array:
  """Chooses one token per row [B] from logits [B, V]; ``seen``: the rows' History (or [B, V] seen ids)."""
  return select(penalise(logits, spec, params, seen), key, spec, params)


def select(logits: Array, key: Array | None, spec: SamplingSpec, params: SamplingParams) -> Array:
  """Greedy or sampled choice [B] from already penalised logits [B, V]."""
  if spec.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  probs = filtered_probs(logits, spec, params)
  return jax.random.categorical(key, jnp.log(probs), axis=-1).astype(jnp.int32)


def mark_seen(seen: History | Array, tokens: Array, valid: Array | None = None) -> History | Array:
  """Adds tokens [B, C] (where valid, a prefix of each row) to the per-row set of seen token ids [B, V], or to a
  History (its set and its sequence)."""
  valid = jnp.ones(tokens.shape, bool) if valid is None else valid
  if isinstance(seen, History):
    history = seen
    new_seen = None if history.seen is None else mark_seen(history.seen, tokens, valid)
    if history.tokens is None:
      return history._replace(seen=new_seen)
    pos = jnp.where(valid, history.length[:, None] + jnp.arange(tokens.shape[1])[None], history.tokens.shape[1])
    rows = jnp.arange(tokens.shape[0])[:, None]
    return History(new_seen, history.tokens.at[rows, pos].set(tokens, mode="drop"),
                   history.length + jnp.sum(valid, axis=1).astype(jnp.int32))
  rows = jnp.arange(seen.shape[0])[:, None]
  return seen.at[rows, tokens].max(valid)
