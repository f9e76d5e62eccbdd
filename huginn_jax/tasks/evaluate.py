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
  exited: Array  # [T, B, S] int32: the iteration (1-based) each position first met threshold T, 0 if not yet


@dataclasses.dataclass(frozen=True)
class _KLExitObserver:
  """A ``model.StepObserver`` decoding every position after every iteration and recording, per threshold, when
  the KL between consecutive next-token distributions first falls below it."""

  model: Any
  prepared: api.Prepared
  thresholds: tuple[float, ...]

  def init(self, s0: Array) -> _KLExit:
    vocab = self.model.config.vocab_size
    return _KLExit(jnp.full(s0.shape[:2] + (vocab,), -jnp.log(vocab), jnp.float32),
                   jnp.zeros((len(self.thresholds),) + s0.shape[:2], jnp.int32))

  def running(self, observed: _KLExit) -> None:
    return None

  def update(self, observed: _KLExit, step: Array, s: Array, cache):
    logp = jax.nn.log_softmax(self.model.head(s, self.prepared.positions, self.prepared.mask)[1], axis=-1)
    kl = kl_divergence(observed.prev_logp, logp)
    below = kl[None] < jnp.asarray(self.thresholds, jnp.float32)[:, None, None]
    exited = jnp.where((observed.exited == 0) & below, step + 1, observed.exited)
    return _KLExit(logp, exited), cache

  def finished(self, observed: _KLExit) -> Array:
    return jnp.all(observed.exited > 0)


def exit_steps_by_threshold(params, inputs: Array, *, config, max_steps: int, thresholds: Sequence[float]) -> Array:
  """Per threshold and position, the first iteration at which KL(previous || current) of the next-token
  distribution falls below the threshold (the original's ``kl`` exit rule, previous starting uniform);
  ``max_steps`` if it never does. One run of the recurrence (zero initial state) serves every threshold; traceable
  (jit it, or vmap it over several models' params): int32 [len(thresholds), B, S]."""
  model = api.model_from_params(params, config)
  prepared = api.prepare(model, inputs, init_scale=0.0)
  observer = _KLExitObserver(model, prepared, tuple(float(t) for t in thresholds))
  exited = iterate(model.core, prepared.state, prepared.e, prepared.positions, prepared.mask, max_steps,
                   observer=observer).observed.exited
  return jnp.where(exited == 0, max_steps, exited)


def kl_exit_steps(params, config, inputs: np.ndarray, *, max_steps: int, threshold: float = 1e-3) -> np.ndarray:
  """``exit_steps_by_threshold`` for one threshold, as a NumPy array [B, S]."""
  run = jax.jit(functools.partial(exit_steps_by_threshold, config=config, max_steps=max_steps,
                                  thresholds=(threshold,)))
  return np.asarray(run(params, jnp.asarray(inputs, jnp.int32)))[0]
