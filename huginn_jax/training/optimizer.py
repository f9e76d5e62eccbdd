"""The optimizer of the original recipe as an Optax chain, with AdamW as an option.

Default (``name="adam_atan2"``), per optimizer step, in this order:
1. global gradient clipping to ``grad_clip`` (1.0);
2. Adam moments with betas (0.9, 0.95); the update is ``atan2(m, sqrt(v_hat)) / (1 - b1^t)`` (the "atan2" Adam
   of the original, which needs no epsilon), divided per tensor by ``max(1, rms(g / sqrt(v)))`` ("update
   clipping"); with ``running_init`` the moments start at the first gradient (g and g^2) instead of zero;
3. decoupled weight decay ``wd * lr(t) / lr_peak * param`` (the decay follows the schedule), only on matrices and
   the embedding, never on norms or qk_bias;
4. times ``-lr(t)`` (warmup, constant, cooldown).
The whole chain is wrapped in ``optax.apply_if_finite``: a step whose gradients are not finite leaves params and
moments untouched and is counted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax

from huginn_jax.training import schedule as schedule_lib

NO_DECAY_NAMES = ("qk_bias",)


class ScaleByAdamAtan2State(NamedTuple):
  count: chex.Array  # int32 scalar: updates taken
  mu: optax.Updates
  nu: optax.Updates


def scale_by_adam_atan2(b1: float = 0.9, b2: float = 0.95, *, update_clipping: bool = True, eps: float = 1e-6,
                        running_init: bool = False, mu_dtype=None) -> optax.GradientTransformation:
  """Adam whose update is ``atan2(m, sqrt(v_hat)) / (1 - b1^t)`` (bounded, scale invariant, no epsilon).

  With ``update_clipping`` each tensor's update is divided by ``max(1, sqrt(mean(g^2 / max(v, eps^2))))`` (the
  StableAdamW rule the original uses; v is clamped to eps^2 in the state too, as there). ``running_init`` starts
  the moments at the first gradient (m = g, v = g^2) rather than at zero. Bias correction is applied as in the
  original: v through sqrt(1 - b2^t) inside the atan2, m outside it.
  """
  if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
    raise ValueError(f"betas must be in [0, 1), got ({b1}, {b2}).")

  def init_fn(params):
    mu = optax.tree.zeros_like(params, dtype=mu_dtype)
    nu = optax.tree.zeros_like(params)
    return ScaleByAdamAtan2State(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    del params
    first = state.count == 0
    t = (state.count + 1).astype(jnp.float32)
    bc1 = 1.0 - b1 ** t
    bc2_sqrt = jnp.sqrt(1.0 - b2 ** t)

    def leaf(g, m, v):
      g32 = g.astype(jnp.float32)
      m32, v32 = m.astype(jnp.float32), v.astype(jnp.float32)
      if running_init:
        m32 = jnp.where(first, g32, m32)
        v32 = jnp.where(first, g32 * g32, v32)
      m32 = b1 * m32 + (1.0 - b1) * g32
      v32 = b2 * v32 + (1.0 - b2) * g32 * g32
      u = jnp.arctan2(m32, jnp.sqrt(v32) / bc2_sqrt) / bc1
      if update_clipping:
        v32 = jnp.maximum(v32, eps ** 2)
        rms = jnp.sqrt(jnp.mean(g32 * g32 / v32))
        u = u / jnp.maximum(rms, 1.0)
      return u.astype(g.dtype), m32.astype(m.dtype), v32.astype(v.dtype)

    out = jax.tree.map(leaf, updates, state.mu, state.nu)
    is_triple = lambda x: isinstance(x, tuple) and len(x) == 3  # noqa: E731
    pick = lambda i: jax.tree.map(lambda x: x[i], out, is_leaf=is_triple)  # noqa: E731
    return pick(0), ScaleByAdamAtan2State(count=optax.safe_increment(state.count), mu=pick(1), nu=pick(2))

  return optax.GradientTransformation(init_fn, update_fn)


def weight_decay_mask(params) -> Any:
  """True where the original applies weight decay: matrices and the embedding; not norms (1-D) or qk_bias."""
  def decide(path, leaf):
    names = {str(getattr(p, "key", getattr(p, "name", ""))) for p in path}
    return leaf.ndim >= 2 and not names & set(NO_DECAY_NAMES)
  return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                                optax.Schedule]:
  """The Optax chain of a training config's ``optimizer`` section, and its learning-rate schedule."""
  opt = config.optimizer
  schedule = schedule_lib.make_schedule(opt, total_steps)
  b1, b2 = opt.betas
  if opt.name == "adam_atan2":
    scale = scale_by_adam_atan2(b1, b2, update_clipping=opt.update_clipping, eps=opt.eps,
                                running_init=opt.running_init)
  elif opt.name == "adamw":
    scale = optax.scale_by_adam(b1, b2, eps=opt.eps)
  else:
    raise ValueError(f"Unknown optimizer.name {opt.name!r}; choose 'adam_atan2' (the original's) or 'adamw'.")
  parts = []
  if opt.grad_clip is not None and opt.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip))
  parts.append(scale)
  if opt.weight_decay:
    if opt.name == "adam_atan2":
      # Decoupled: the decay is wd * lr(t) / lr_peak after the final -lr(t) scaling.
      if opt.lr <= 0:
        raise ValueError(f"optimizer.lr must be positive with weight decay, got {opt.lr}.")
      parts.append(optax.add_decayed_weights(opt.weight_decay / opt.lr, mask=weight_decay_mask))
    else:
      parts.append(optax.add_decayed_weights(opt.weight_decay, mask=weight_decay_mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  chain = optax.chain(*parts)
  if opt.skip_nonfinite:
    # The loop stops a run after too many consecutive skips; never let apply_if_finite apply a NaN update.
    chain = optax.apply_if_finite(chain, max_consecutive_errors=2 ** 30)
  return chain, schedule


def skipped_steps(opt_state) -> jax.Array:
  """How many steps ``apply_if_finite`` skipped for non-finite gradients so far (0 if it is not in the chain)."""
  if isinstance(opt_state, optax.ApplyIfFiniteState):
    return opt_state.total_notfinite
  return jnp.zeros([], jnp.int32)


def applied_updates(opt_state, step) -> jax.Array:
  """The number of updates actually applied (the schedule's position): steps taken minus steps skipped."""
  return jnp.asarray(step) - skipped_steps(opt_state)
