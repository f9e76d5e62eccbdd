"""The recurrence sampler of the original: how many core iterations a train step runs, and how many get gradient.

Per step ``rate ~ LogNormal(ln r - sigma^2 / 2, sigma)`` (its mean is r), ``p = Poisson(rate) + 1``; the step runs
``n = max(p - k0, 0)`` iterations without gradient, then ``k = min(k0, p)`` with gradient. The key comes from the
step number, so every host (and a resumed run) draws the same (n, k) without communicating.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array
SIGMA = 0.5


def step_key(base_key: Array, step: Array | int) -> Array:
  """The key of one train step: identical on every host, and after a restart."""
  return jax.random.fold_in(base_key, step)


def sample_total_depth(key: Array, mean_recurrence: int, sigma: float = SIGMA) -> Array:
  """``p = Poisson(LogNormal(ln r - sigma^2/2, sigma)) + 1``, an int32 scalar >= 1 (mean r + 1)."""
  if mean_recurrence <= 0:
    raise ValueError(f"mean_recurrence must be positive, got {mean_recurrence}.")
  rate_key, poisson_key = jax.random.split(key)
  mu = math.log(mean_recurrence) - sigma ** 2 / 2
  rate = jnp.exp(mu + sigma * jax.random.normal(rate_key, (), jnp.float32))
  return jax.random.poisson(poisson_key, rate, (), jnp.int32) + 1


def split_depth(p: Array, max_grad_steps: int) -> tuple[Array, Array]:
  """(n, k) = (max(p - k0, 0), min(k0, p)): the last k0 iterations (or all p, if fewer) get gradient."""
  if max_grad_steps < 1:
    raise ValueError(f"max_grad_steps (mean_backprop_depth) must be >= 1 for training, got {max_grad_steps}.")
  p = jnp.asarray(p, jnp.int32)
  return jnp.maximum(p - max_grad_steps, 0), jnp.minimum(p, max_grad_steps)


SAMPLERS = ("poisson_lognormal", "fixed")


def sample_depth(key: Array, mean_recurrence: int, max_grad_steps: int, sigma: float = SIGMA,
                 kind: str = "poisson_lognormal") -> tuple[Array, Array]:
  """Draws (n, k) for one train step; both int32 scalars, traceable (no recompilation per draw).

  As in the original the log-normal targets ``max(r - k0, 0) + k0``, i.e. r, or k0 when r < k0. ``kind="fixed"``
  always runs exactly r iterations (e.g. r=1 trains a plain non-recurrent transformer of the same parameters).
  """
  if kind == "fixed":
    return split_depth(jnp.int32(mean_recurrence), max_grad_steps)
  if kind != "poisson_lognormal":
    raise ValueError(f"unknown depth sampler {kind!r}; choose one of {SAMPLERS}.")
  target = max(mean_recurrence - max_grad_steps, 0) + max_grad_steps
  return split_depth(sample_total_depth(key, target, sigma), max_grad_steps)
