"""Next-token selection: repetition penalty, then temperature, top-k, top-p, min-p, in the original's order.

Filters act on probabilities as the original's ``_sample_next_token`` does: top-k keeps probabilities >= the k-th
largest (ties kept); top-p drops every token whose cumulative probability (sorted, inclusive) exceeds p, so the
crossing token is dropped too, but the top token is always kept; min-p drops probabilities below min_p x the
largest remaining one; the rest is renormalised. The repetition penalty (HF's rule: divide positive logits,
multiply negative ones, for every token already in the sequence) comes first. Temperature 0 means greedy.
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


class SamplingParams(NamedTuple):
  temperature: Array
  top_p: Array
  min_p: Array
  repetition_penalty: Array


def make_sampling(vocab_size: int, temperature=0.0, top_k=None, top_p=None, min_p=None,
                  repetition_penalty=None) -> tuple[SamplingSpec, SamplingParams]:
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
  spec = SamplingSpec(greedy=temperature == 0, top_k=min(top_k, vocab_size) if top_k else None,
                      top_p=bool(top_p), min_p=bool(min_p),
                      repetition_penalty=repetition_penalty is not None and repetition_penalty != 1.0)
  f32 = lambda x, default: np.float32(default if x is None else x)  # noqa: E731
  params = SamplingParams(f32(temperature, 0.0), f32(top_p, 1.0), f32(min_p, 0.0), f32(repetition_penalty, 1.0))
  return spec, params


def apply_repetition_penalty(logits: Array, seen: Array, penalty: Array) -> Array:
  """HF's rule for tokens already seen [B, V]: positive logits / penalty, negative ones x penalty."""
  penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
  return jnp.where(seen, penalised, logits)


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
               seen: Array | None = None) -> Array:
  """Chooses one token per row [B] from logits [B, V]."""
  if spec.repetition_penalty:
    logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
  if spec.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  probs = filtered_probs(logits, spec, params)
  return jax.random.categorical(key, jnp.log(probs), axis=-1).astype(jnp.int32)


def mark_seen(seen: Array, tokens: Array, valid: Array | None = None) -> Array:
  """Adds tokens [B, C] (where valid) to the per-row set of seen token ids [B, V]."""
  valid = jnp.ones(tokens.shape, bool) if valid is None else valid
  rows = jnp.arange(seen.shape[0])[:, None]
  return seen.at[rows, tokens].max(valid)
