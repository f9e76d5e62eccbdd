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
  """Argmax predictions [B, S] after each number of iterations (zero initial state): one run of the recurrence
  (``step_profile``) up to the largest count serves them all."""
  steps = tuple(int(r) for r in steps)
  run = jax.jit(functools.partial(step_profile, config=config, max_steps=max(steps), record_steps=steps))
  predictions = np.asarray(run(params, jnp.asarray(inputs, jnp.int32))[1])
  return dict(zip(steps, predictions))


def accuracy_by_steps(params, config, inputs: np.ndarray, labels: np.ndarray, steps: Sequence[int]) -> dict:
  """{r: {"accuracy": mean over labelled positions, "by_position": [S] accuracy per position}}."""
  valid = labels >= 0
  out = {}
  for r, pred in predictions_by_steps(params, config, inputs, steps).items():
    hit = (pred == labels) & valid
    out[r] = {"accuracy": float(hit.sum() / valid.sum()),
              "by_position": (hit.sum(0) / np.maximum(valid.sum(0), 1)).tolist()}
  return out


class _StepProfile(NamedTuple):
  prev_logp: Array  # [B, S, V] next-token log-distribution after the previous iteration (uniform at first)
  exited: Array  # [T, B, S] int32: the iteration (1-based) each position first met threshold T, 0 if not yet
  predictions: Array  # [R, B, S] int32: the argmax after each recorded iteration count (0 until reached)


@dataclasses.dataclass(frozen=True)
class _StepProfileObserver:
  """A ``model.StepObserver`` that decodes every position after every iteration: it records, per threshold, when
  the KL between consecutive next-token distributions first falls below it, and the argmax after each of
  ``record_steps`` iterations. Runs to the end unless nothing is recorded (then it stops once all have exited)."""

  model: Any
  prepared: api.Prepared
  thresholds: tuple[float, ...]
  record_steps: tuple[int, ...]

  def init(self, s0: Array) -> _StepProfile:
    vocab = self.model.config.vocab_size
    return _StepProfile(jnp.full(s0.shape[:2] + (vocab,), -jnp.log(vocab), jnp.float32),
                        jnp.zeros((len(self.thresholds),) + s0.shape[:2], jnp.int32),
                        jnp.zeros((len(self.record_steps),) + s0.shape[:2], jnp.int32))

  def running(self, observed: _StepProfile) -> None:
    return None

  def update(self, observed: _StepProfile, step: Array, s: Array, cache):
    logp = jax.nn.log_softmax(self.model.head(s, self.prepared.positions, self.prepared.mask)[1], axis=-1)
    kl = kl_divergence(observed.prev_logp, logp)
    below = kl[None] < jnp.asarray(self.thresholds, jnp.float32).reshape(-1, 1, 1)
    exited = jnp.where((observed.exited == 0) & below, step + 1, observed.exited)
    now = (jnp.asarray(self.record_steps, jnp.int32) == step + 1).reshape(-1, 1, 1)
    predictions = jnp.where(now, logp.argmax(-1).astype(jnp.int32)[None], observed.predictions)
    return _StepProfile(logp, exited, predictions), cache

  def finished(self, observed: _StepProfile) -> Array:
    return jnp.all(observed.exited > 0) & (len(self.record_steps) == 0)


def step_profile(params, inputs: Array, *, config, max_steps: int, thresholds: Sequence[float] = (),
                 record_steps: Sequence[int] = ()) -> tuple[Array, Array]:
  """One run of the recurrence (zero initial state) that decodes every position after every iteration.

  Returns (exit steps int32 [len(thresholds), B, S]: per threshold the first iteration at which KL(previous ||
  current) of the next-token distribution falls below it, the original's ``kl`` exit rule with previous starting
  uniform, ``max_steps`` if never; predictions int32 [len(record_steps), B, S]: the argmax after each of
  ``record_steps`` iterations, each <= ``max_steps``). Traceable: jit it, or vmap it over several models' params.
  """
  if any(not 1 <= r <= max_steps for r in record_steps):
    raise ValueError(f"record_steps {tuple(record_steps)} must lie in [1, max_steps={max_steps}].")
  model = api.model_from_params(params, config)
  prepared = api.prepare(model, inputs, init_scale=0.0)
  observer = _StepProfileObserver(model, prepared, tuple(float(t) for t in thresholds),
                                  tuple(int(r) for r in record_steps))
  observed = iterate(model.core, prepared.state, prepared.e, prepared.positions, prepared.mask, max_steps,
                     observer=observer).observed
  return jnp.where(observed.exited == 0, max_steps, observed.exited), observed.predictions


def kl_exit_steps(params, config, inputs: np.ndarray, *, max_steps: int, threshold: float = 1e-3) -> np.ndarray:
  """Per position, the first iteration at which the KL exit rule (``step_profile``) stops: [B, S] int32."""
  run = jax.jit(functools.partial(step_profile, config=config, max_steps=max_steps, thresholds=(threshold,)))
  return np.asarray(run(params, jnp.asarray(inputs, jnp.int32))[0])[0]
