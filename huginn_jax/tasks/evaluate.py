"""Accuracy against test-time iterations, and the iterations an adaptive exit rule would spend per position."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from huginn_jax import api
from huginn_jax.decoding.exit_criteria import kl_divergence
from huginn_jax.model import iterate

Array = jax.Array


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


class _KLExit(NamedTuple):
  prev_logp: Array  # [B, S, V] next-token log-distribution after the previous iteration (uniform at first)
  exited: Array  # [B, S] int32: the iteration (1-based) each position first met the threshold, 0 if not yet


@dataclasses.dataclass(frozen=True)
class _KLExitObserver:
  """A ``model.StepObserver`` decoding every position after every iteration and recording when KL falls."""

  model: Any
  prepared: api.Prepared
  threshold: float

  def init(self, s0: Array) -> _KLExit:
    vocab = self.model.config.vocab_size
    return _KLExit(jnp.full(s0.shape[:2] + (vocab,), -jnp.log(vocab), jnp.float32),
                   jnp.zeros(s0.shape[:2], jnp.int32))

  def running(self, observed: _KLExit) -> None:
    return None

  def update(self, observed: _KLExit, step: Array, s: Array, cache):
    logp = jax.nn.log_softmax(self.model.head(s, self.prepared.positions, self.prepared.mask)[1], axis=-1)
    kl = kl_divergence(observed.prev_logp, logp)
    exited = jnp.where((observed.exited == 0) & (kl < self.threshold), step + 1, observed.exited)
    return _KLExit(logp, exited), cache

  def finished(self, observed: _KLExit) -> Array:
    return jnp.all(observed.exited > 0)


def kl_exit_steps(params, config, inputs: np.ndarray, *, max_steps: int, threshold: float = 1e-3) -> np.ndarray:
  """Per position, the first iteration at which KL(previous || current) of the next-token distribution falls below
  ``threshold`` (the original's ``kl`` exit rule, previous starting uniform); ``max_steps`` if it never does.

  Runs the recurrence once, decoding every position after every iteration: [B, S] int32.
  """

  @jax.jit
  def run(params, inputs):
    model = api.model_from_params(params, config)
    prepared = api.prepare(model, inputs, init_scale=0.0)
    observer = _KLExitObserver(model, prepared, threshold)
    exited = iterate(model.core, prepared.state, prepared.e, prepared.positions, prepared.mask, max_steps,
                     observer=observer).observed.exited
    return jnp.where(exited == 0, max_steps, exited)

  return np.asarray(run(params, jnp.asarray(inputs, jnp.int32)))
