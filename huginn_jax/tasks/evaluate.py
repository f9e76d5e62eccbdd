"""Accuracy against test-time iterations, and the iterations an adaptive exit rule would spend per position."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from huginn_jax import api
from huginn_jax.decoding.exit_criteria import kl_divergence


def predictions_by_steps(params, config, inputs: np.ndarray, steps: Sequence[int]) -> dict[int, np.ndarray]:
  """Argmax predictions [B, S] after each number of iterations (zero initial state), one compilation for all."""
  forward = jax.jit(functools.partial(api.forward, config=config, init_scale=0.0))
  return {int(r): np.asarray(forward(params, inputs, num_steps=jnp.int32(r)).logits.argmax(-1)) for r in steps}


def accuracy_by_steps(params, config, inputs: np.ndarray, labels: np.ndarray, steps: Sequence[int]) -> dict:
  """{r: {"accuracy": mean over labelled positions, "by_position": [S] accuracy per position}}."""
  valid = labels >= 0
  out = {}
  for r, pred in predictions_by_steps(params, config, inputs, steps).items():
    hit = (pred == labels) & valid
    out[r] = {"accuracy": float(hit.sum() / valid.sum()),
              "by_position": (hit.sum(0) / np.maximum(valid.sum(0), 1)).tolist()}
  return out


def exit_steps_by_threshold(params, inputs: jax.Array, *, config, max_steps: int,
                             thresholds: Sequence[float]) -> jax.Array:
  """Per threshold and position, the first iteration at which KL(previous || current) of the next-token
  distribution falls below the threshold (the original's ``kl`` exit rule, previous starting uniform);
  ``max_steps`` if it never does. Traceable (jit / vmap it over models): int32 [len(thresholds), B, S].

  Runs the recurrence once, decoding every position after every iteration.
  """
  limits = jnp.asarray(thresholds, jnp.float32)[:, None, None]
  model = api.model_from_params(params, config)
  e, s, positions, mask = api.prepare(model, inputs, None, None, None, None, 0.0)

  def body(carry, step):
    s, prev_logp, exited = carry
    s = model.core(s, e, positions, mask)
    logp = jax.nn.log_softmax(model.head(s, positions, mask)[1], axis=-1)
    kl = kl_divergence(prev_logp, logp)
    exited = jnp.where((exited == 0) & (kl < limits), step, exited)
    return (s, logp, exited), None

  uniform = jnp.full(inputs.shape + (config.vocab_size,), -jnp.log(config.vocab_size), jnp.float32)
  never = jnp.zeros((len(thresholds),) + inputs.shape, jnp.int32)
  (_, _, exited), _ = jax.lax.scan(body, (s, uniform, never), jnp.arange(1, max_steps + 1))
  return jnp.where(exited == 0, max_steps, exited)


def kl_exit_steps(params, config, inputs: np.ndarray, *, max_steps: int, threshold: float = 1e-3) -> np.ndarray:
  """``exit_steps_by_threshold`` for one threshold, as a NumPy array [B, S]."""
  run = jax.jit(functools.partial(exit_steps_by_threshold, config=config, max_steps=max_steps,
                                  thresholds=(threshold,)))
  return np.asarray(run(params, jnp.asarray(inputs, jnp.int32)))[0]
