"""Per-sequence exit criteria of adaptive compute, evaluated after every core iteration inside the jitted loop.

Each criterion turns (previous state, new core state, next-token logits) into one value per batch row and exits
the row when the value is below its threshold (``argmax-stability``: at or above). Defaults are the original's.
Logit criteria decode the state through ln_f -> coda -> ln_f -> head at the last real position of the chunk;
latent criteria compare the raw core states (before ln_f), averaged over the chunk's real positions. The first
"previous" distribution of the KL criteria is uniform over the vocabulary, the first previous entropy is 100,
the first previous latent is the initial state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _masked_mean(x: Array, valid: Array) -> Array:
  """Mean over positions [B, C] -> [B] of the positions marked valid."""
  valid = valid.astype(x.dtype)
  return jnp.sum(x * valid, axis=-1) / jnp.maximum(jnp.sum(valid, axis=-1), 1.0)


def _norm(x: Array) -> Array:
  return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1))


def kl_divergence(prev_logp: Array, logp: Array) -> Array:
  """KL(prev || cur) of two log-distributions [B, V]."""
  return jnp.sum(jnp.exp(prev_logp) * (prev_logp - logp), axis=-1)


def _uniform_logp(batch: int, vocab: int) -> Array:
  return jnp.full((batch, vocab), jnp.log(jnp.float32(1.0 / vocab)), jnp.float32)


def _kl(state, *, logits, **_):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return logp, kl_divergence(state, logp)


def _minp_log_probs(logits: Array) -> Array:
  """Probabilities below 0.1 x the top one are replaced by 1/V, then renormalised (the original's minp-kl)."""
  vocab = logits.shape[-1]
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  probs = jnp.where(probs < 0.1 * jnp.max(probs, axis=-1, keepdims=True), 1.0 / vocab, probs)
  return jnp.log(probs / jnp.sum(probs, axis=-1, keepdims=True))


def _minp_kl(state, *, logits, **_):
  logp = _minp_log_probs(logits)
  return logp, kl_divergence(state, logp)


def _entropy_diff(state, *, logits, **_):
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  entropy = -jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)
  return entropy, jnp.abs(entropy - state)


def _latent_diff(state, *, latents, valid, **_):
  rel = _norm(latents - state) / _norm(latents)
  return latents, _masked_mean(rel, valid)


def _cosine(state, *, latents, valid, **_):
  a, b = latents.astype(jnp.float32), state.astype(jnp.float32)
  cos = jnp.sum(a * b, axis=-1) / _norm(a) / _norm(b)
  return latents, 1.0 - _masked_mean(cos, valid)


def _argmax_stability(state, *, logits, **_):
  prev, count = state
  current = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  count = jnp.where(current == prev, count + 1, 0)
  return (current, count), count.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ExitCriterion:
  name: str
  default_threshold: float
  needs_logits: bool
  exit_at_or_above: bool
  init: Callable[..., Any]  # (batch, vocab, initial core state) -> state
  update: Callable[..., tuple[Any, Array]]  # (state, *, latents, logits, valid) -> (state, values [B])

  def exits(self, values: Array, threshold: Array) -> Array:
    """Rows whose value meets the exit test (a NaN value never exits)."""
    return values >= threshold if self.exit_at_or_above else values < threshold


CRITERIA = {
    "kl": ExitCriterion("kl", 1e-3, True, False, lambda b, v, s0: _uniform_logp(b, v), _kl),
    "minp-kl": ExitCriterion("minp-kl", 1e-5, True, False, lambda b, v, s0: _uniform_logp(b, v), _minp_kl),
    "entropy-diff": ExitCriterion("entropy-diff", 1e-3, True, False,
                                  lambda b, v, s0: jnp.full((b,), 100.0, jnp.float32), _entropy_diff),
    "latent-diff": ExitCriterion("latent-diff", 0.03, False, False, lambda b, v, s0: s0, _latent_diff),
    "cosine": ExitCriterion("cosine", 1e-3, False, False, lambda b, v, s0: s0, _cosine),
    "argmax-stability": ExitCriterion(
        "argmax-stability", 5, True, True,
        lambda b, v, s0: (jnp.full((b,), -1, jnp.int32), jnp.zeros((b,), jnp.int32)), _argmax_stability),
}


def get_criterion(name: str) -> ExitCriterion:
  if name not in CRITERIA:
    raise ValueError(f"Unknown exit_criterion {name!r}; choose one of {sorted(CRITERIA)} (or None for a fixed "
                     "number of iterations).")
  return CRITERIA[name]
