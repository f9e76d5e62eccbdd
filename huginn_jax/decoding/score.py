"""``score_continuations``: log-likelihoods of given continuations decoded token by token, as generation would.

With adaptive compute each token exits the recurrence on its own, so a continuation cannot be scored by one
parallel forward: its tokens are fed one at a time through the KV cache (the context first, as one chunk, like
``hj.generate``'s prefill), and the log-probability of each next given token is read from the logits of the
iteration where its position exited. Teacher-forcing the greedy continuation reproduces ``hj.generate``'s tokens
and ``steps`` exactly; scoring any other continuation spends the iterations generation would have spent on it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from huginn_jax import config as config_lib
from huginn_jax.api import model_from_params
from huginn_jax.decoding import cache as cache_lib
from huginn_jax.decoding.chunk import run_chunk
from huginn_jax.decoding.exit_criteria import get_criterion
from huginn_jax.model import cast_weights

Array = jax.Array


class ContinuationScores(NamedTuple):
  logprobs: Array  # [B, T] log p(target_t | context, targets_<t) float32; 0 past a row's length
  greedy: Array  # [B, T] whether target_t is the argmax; True past a row's length
  steps: Array  # [B, T] core iterations spent on the position that predicts target_t; 0 past a row's length


def _pick(logits: Array, target: Array) -> tuple[Array, Array]:
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, target[:, None], axis=-1)[:, 0], jnp.argmax(logits, axis=-1) == target


@functools.partial(jax.jit, static_argnames=("config", "layout", "num_steps", "criterion"))
def _score_impl(params, context: Array, context_len: Array, targets: Array, target_len: Array, threshold: Array, *,
                config: ml_collections.FrozenConfigDict, layout: cache_lib.CacheLayout, num_steps: int,
                criterion: str | None) -> ContinuationScores:
  model = model_from_params(cast_weights(params, config.compute_dtype), config)
  batch, width = context.shape
  n = targets.shape[1]
  crit = get_criterion(criterion) if criterion else None
  key = jax.random.key(0)  # unused: the initial state is zeros (init_scale 0)
  cache = cache_lib.init_cache(layout, config, batch, width + n)
  valid = jnp.arange(width)[None] < context_len[:, None]
  out = run_chunk(model, layout, cache, context, jnp.zeros((batch,), jnp.int32), num_steps=num_steps,
                  active=jnp.ones((batch,), bool), valid=valid, last=context_len - 1, key=key, init_scale=0.0,
                  criterion=crit, threshold=threshold)
  lp0, greedy0 = _pick(out.logits, targets[:, 0])

  def body(cache, t):
    active = t < target_len
    out = run_chunk(model, layout, cache, targets[:, t - 1][:, None], context_len + t - 1, num_steps=num_steps,
                    active=active, key=key, init_scale=0.0, criterion=crit, threshold=threshold)
    lp, greedy = _pick(out.logits, targets[:, t])
    return out.cache, (jnp.where(active, lp, 0.0), greedy | ~active, jnp.where(active, out.steps, 0))

  _, (lps, greedies, steps) = jax.lax.scan(body, out.cache, jnp.arange(1, n))
  return ContinuationScores(logprobs=jnp.concatenate([lp0[:, None], lps.T], axis=1),
                            greedy=jnp.concatenate([greedy0[:, None], greedies.T], axis=1),
                            steps=jnp.concatenate([out.steps[:, None], steps.T], axis=1))


def score_continuations(params, context, context_lengths, targets, target_lengths, *, config,
                        num_steps: int | None = None, cache: str = "full", exit_criterion: str | None = None,
                        exit_threshold: float | None = None) -> ContinuationScores:
  """Scores right-padded ``targets`` [B, T] after right-padded ``context`` [B, S] (int token ids).

  Zero initial state (deterministic). ``num_steps`` (default ``config.mean_recurrence``) is the most iterations
  per token; ``exit_criterion``/``exit_threshold``/``cache`` as in ``hj.generate``.
  """
  context, targets = np.asarray(context, np.int32), np.asarray(targets, np.int32)
  context_lengths, target_lengths = np.asarray(context_lengths, np.int32), np.asarray(target_lengths, np.int32)
  if context.ndim != 2 or targets.ndim != 2 or context.shape[0] != targets.shape[0]:
    raise ValueError(f"context [B, S] and targets [B, T] need the same batch, got {context.shape} and "
                     f"{targets.shape}.")
  if np.any(context_lengths < 1) or np.any(target_lengths < 1):
    raise ValueError("every row needs at least one context token and one target token.")
  if context.shape[1] + targets.shape[1] > config.max_seq_len:
    raise ValueError(f"context ({context.shape[1]}) + targets ({targets.shape[1]}) exceed config.max_seq_len="
                     f"{config.max_seq_len}; truncate the context.")
  num_steps = int(config.mean_recurrence if num_steps is None else num_steps)
  threshold = None
  if exit_criterion is not None:
    crit = get_criterion(exit_criterion)
    threshold = crit.default_threshold if exit_threshold is None else exit_threshold
  return _score_impl(params, context, context_lengths, targets, target_lengths,
                     np.float32(0.0 if threshold is None else threshold), config=config_lib.frozen(config),
                     layout=cache_lib.cache_layout(cache, config, num_steps), num_steps=num_steps,
                     criterion=exit_criterion)
