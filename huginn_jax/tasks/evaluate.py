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


def kl_exit_steps(params, config, inputs: np.ndarray, *, max_steps: int, threshold: float = 1e-3) -> np.ndarray:
  """Per position, the first iteration at which KL(previous || current) of the next-token distribution falls below
  ``threshold`` (the original's ``kl`` exit rule, previous starting uniform); ``max_steps`` if it never does.

  Runs the recurrence once, decoding every position after every iteration: [B, S] int32.
  """
  model_steps = jnp.arange(1, max_steps + 1)

  @jax.jit
  def run(params, inputs):
    model = api.model_from_params(params, config)
    e, s, positions, mask = api.prepare(model, inputs, None, None, None, None, 0.0)

    def body(carry, step):
      s, prev_logp, exited = carry
      s = model.core(s, e, positions, mask)
      logp = jax.nn.log_softmax(model.head(s, positions, mask)[1], axis=-1)
      kl = kl_divergence(prev_logp, logp)
      exited = jnp.where((exited == 0) & (kl < threshold), step, exited)
      return (s, logp, exited), None

    uniform = jnp.full(inputs.shape + (config.vocab_size,), -jnp.log(config.vocab_size), jnp.float32)
    (_, _, exited), _ = jax.lax.scan(body, (s, uniform, jnp.zeros(inputs.shape, jnp.int32)), model_steps)
    return jnp.where(exited == 0, max_steps, exited)

  return np.asarray(run(params, jnp.asarray(inputs, jnp.int32)))
