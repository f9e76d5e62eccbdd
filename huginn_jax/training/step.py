"""The train step: sample (n, k), loss with truncated backprop, accumulated gradients, one optimizer update.

The step is a pure function ``(state, batch) -> (state, metrics)``; ``jit_train_step`` compiles it with in/out
shardings and donates the old state. The depth (n, k) and the random initial latent state come from keys derived
from the step number, so every host computes the same thing and a resumed run repeats it exactly.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from huginn_jax import api
from huginn_jax import sharding as sharding_lib
from huginn_jax.training import config as train_config_lib
from huginn_jax.training import optimizer as optimizer_lib
from huginn_jax.training import sampler
from huginn_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]  # "inputs", "labels": int32 [grad_accum_steps, micro_batch, seq]
BATCH_AXES = (None, "act_batch", "act_seq")
STATE_AXES = ("act_batch", "act_seq", "act_embed")


def initial_latent(params, model_config, keys: jax.Array, seq_len: int, init_scale: float) -> jax.Array:
  """The random initial state of the recurrence, [rows, seq, d]: row i drawn from ``keys[i]`` with the model's
  recipe, so a sequence gets the same state however the batch is split into micro-batches or devices."""
  dtype = jnp.dtype(model_config.compute_dtype)
  shape = (seq_len, model_config.d_model)
  if init_scale == 0:
    return jnp.zeros((keys.shape[0], *shape), dtype)
  model = api.model_from_params(params, model_config)
  return jax.vmap(lambda key: model.initial_state(jax.ShapeDtypeStruct(shape, dtype), key, init_scale))(keys)


def step_keys(seed: int, step) -> tuple[jax.Array, jax.Array]:
  """(key of the depth draw, key of the initial states) of a step: the same on every host and after a resume."""
  depth_key, state_key = jax.random.split(sampler.step_key(jax.random.key(seed), step))
  return depth_key, state_key


def row_keys(state_key: jax.Array, batch_size: int) -> jax.Array:
  """One key per sequence of the step's global batch."""
  return jax.vmap(lambda i: jax.random.fold_in(state_key, i))(jnp.arange(batch_size))


def depth_loss(params, inputs: jax.Array, labels: jax.Array, n: jax.Array, k: jax.Array, keys: jax.Array, *,
               model_config, max_grad_steps: int, remat_policy: str = "none", init_scale: float = 1.0,
               constrain: Callable | None = None, loss_chunk: int = 0) -> jax.Array:
  """The training loss of one micro-batch: random initial states from ``keys`` (one per row), n iterations
  without gradient, k (traced, at most ``max_grad_steps``) with gradient, each gradient iteration checkpointed
  with the remat policy."""
  s0 = initial_latent(params, model_config, keys, inputs.shape[1], init_scale)
  if constrain is not None:
    s0 = constrain(s0, STATE_AXES, name="initial state")
  return api.loss(params, inputs, labels, config=model_config, depth=(n, k), initial_state=s0,
                  max_grad_steps=max_grad_steps, remat_policy=remat_policy, loss_chunk=loss_chunk or None)


def make_train_step(model_config, train_config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, mesh: Mesh | None = None,
                    rules: Mapping[str, Any] | None = None) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """The step function of a run; pass ``mesh`` and ``rules`` to constrain the batch and, inside the model, every
  activation by the logical-axis rules."""
  frozen = ml_collections.FrozenConfigDict(model_config)
  r, k0 = train_config_lib.depth(train_config, model_config)
  sigma, seed = float(train_config.sampler_sigma), int(train_config.seed)
  rules = rules if rules is not None else sharding_lib.rules_table(train_config.sharding_rules)
  constrain = functools.partial(sharding_lib.constrain, mesh=mesh, rules=rules)
  grad_fn = jax.value_and_grad(functools.partial(
      depth_loss, model_config=frozen, max_grad_steps=k0, remat_policy=train_config.remat_policy,
      init_scale=float(train_config.init_scale), constrain=constrain, loss_chunk=int(train_config.loss_chunk)))

  def train_step(state: TrainState, batch: Batch, run_seed: jax.Array | None = None,
                 depth: jax.Array | None = None) -> tuple[TrainState, dict]:
    """``run_seed`` (traced int32) replaces ``train.seed`` for the depth draws and initial states: ``jax.vmap``
    over it (and a leading axis of state and batch) trains several seeds in one program. ``depth``, an int [2]
    (n, k), replaces the step's own depth draw: given unbatched to a vmapped step, every seed runs the same
    iterations (a vmapped loop otherwise runs as many as the deepest seed draws)."""
    with sharding_lib.activation_sharding(mesh, rules):  # the model constrains its activations by the same rules
      return _train_step(state, batch, run_seed, depth)

  def _train_step(state: TrainState, batch: Batch, run_seed: jax.Array | None,
                  depth: jax.Array | None) -> tuple[TrainState, dict]:
    inputs = constrain(batch["inputs"], BATCH_AXES, name="batch inputs")
    labels = constrain(batch["labels"], BATCH_AXES, name="batch labels")
    depth_key, state_key = step_keys(seed if run_seed is None else run_seed, state.step)
    if depth is None:
      n, k = sampler.sample_depth(depth_key, r, k0, sigma, train_config.depth_sampler)
    else:
      n, k = depth[0], depth[1]
    accum, micro = inputs.shape[:2]
    keys = row_keys(state_key, accum * micro).reshape(accum, micro)
    if accum == 1:
      loss, grads = grad_fn(state.params, inputs[0], labels[0], n, k, keys[0])
    else:
      def body(carry, xs):
        x, y, micro_keys = xs
        loss_i, grads_i = grad_fn(state.params, x, y, n, k, micro_keys)
        return jax.tree.map(jnp.add, carry, (loss_i, grads_i)), None
      zeros = (jnp.zeros([], jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(body, zeros, (inputs, labels, keys))
      loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
    lr = schedule(optimizer_lib.applied_updates(state.opt_state, state.step))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    skipped_before = optimizer_lib.skipped_steps(state.opt_state)
    skipped_total = optimizer_lib.skipped_steps(opt_state)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "update_norm": optax.tree.norm(updates),
        "lr": lr,
        "n": n,
        "k": k,
        "skipped": skipped_total > skipped_before,
        "skipped_total": skipped_total,
        "skipped_in_a_row": (opt_state.notfinite_count if isinstance(opt_state, optax.ApplyIfFiniteState)
                             else jnp.zeros([], jnp.int32)),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def depth_schedule(train_config, model_config, start: int, end: int) -> np.ndarray:
  """The (n, k) that the train steps ``start..end-1`` draw, as an int array [end - start, 2], computed in one
  call before the loop (for FLOP counts), so the host never waits on the device for them."""
  r, k0 = train_config_lib.depth(train_config, model_config)
  seed, sigma = int(train_config.seed), float(train_config.sampler_sigma)
  kind = train_config.depth_sampler

  @jax.jit
  def draw(steps):
    return jax.vmap(lambda s: jnp.stack(sampler.sample_depth(step_keys(seed, s)[0], r, k0, sigma, kind)))(steps)

  return np.asarray(draw(jnp.arange(start, end, dtype=jnp.int32)))


def batch_sharding(mesh: Mesh, rules: Mapping[str, Any], shape: tuple[int, ...]) -> NamedSharding:
  """Sharding of a [grad_accum_steps, micro_batch, seq] batch array: micro-batch over (data, fsdp)."""
  return sharding_lib.sharding_for(mesh, rules, BATCH_AXES, shape, name="batch")


def jit_train_step(step_fn, state_shardings: TrainState | None = None, batch_shardings: Any = None, *,
                   donate: bool = True):
  """``jax.jit`` of the step with in/out shardings and the old state donated."""
  if state_shardings is None:
    return jax.jit(step_fn, donate_argnums=(0,) if donate else ())
  return jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, None),
                 donate_argnums=(0,) if donate else ())
