"""The train state (step, params, optimizer state), its abstract shape and its shardings."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from huginn_jax import api
from huginn_jax import sharding as sharding_lib


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar: optimizer steps taken (skipped ones included); keys the depth sampler
  params: Any
  opt_state: optax.OptState


def create(params, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=optimizer.init(params))


def abstract_state(model_config, optimizer: optax.GradientTransformation) -> TrainState:
  """Shapes and dtypes of the train state (``jax.ShapeDtypeStruct`` leaves), nothing allocated."""
  return jax.eval_shape(lambda p: create(p, optimizer), api.abstract_params(model_config))


def state_shardings(model_config, optimizer: optax.GradientTransformation, mesh: Mesh, param_shardings) -> TrainState:
  """Shardings of the train state: optimizer moments like their params, counters replicated."""
  abstract = abstract_state(model_config, optimizer)
  replicated = sharding_lib.replicated(mesh)
  opt = optax.tree_utils.tree_map_params(optimizer, lambda _, sharding: sharding, abstract.opt_state,
                                         param_shardings, transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt)


def with_shardings(abstract, shardings):
  """Abstract arrays carrying shardings: the restore target that puts a checkpoint onto the current mesh."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def init_state(model_config, optimizer: optax.GradientTransformation, shardings: TrainState | None, *,
               key: jax.Array | None = None, params=None) -> TrainState:
  """A fresh train state, created directly in its shardings: from ``params`` (fine-tuning) or random from ``key``."""
  out = shardings if shardings is not None else None
  if params is not None:
    in_shardings = (shardings.params,) if shardings is not None else None
    return jax.jit(lambda p: create(p, optimizer), in_shardings=in_shardings, out_shardings=out)(params)
  if key is None:
    raise ValueError("init_state needs params=... (fine-tuning) or key=... (random init).")
  return jax.jit(lambda k: create(api.init(model_config, k), optimizer), out_shardings=out)(key)
