"""The optimizer: atan2 Adam with update clipping against a NumPy reference, the decoupled scheduled weight decay,
its mask, gradient clipping, non-finite skipping, and the schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import huginn_jax as hj
from huginn_jax.training import config as train_config
from huginn_jax.training import optimizer as opt_lib
from huginn_jax.training import schedule as schedule_lib


def _reference_adam_atan2(grads, b1, b2, eps, update_clipping, running_init):
  """The update rule written out in float64 NumPy, one tensor, several steps."""
  m = np.zeros_like(grads[0], np.float64)
  v = np.zeros_like(grads[0], np.float64)
  out = []
  for t, g in enumerate(grads, start=1):
    g = g.astype(np.float64)
    if running_init and t == 1:
      m, v = g.copy(), g * g
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    u = np.arctan2(m, np.sqrt(v) / np.sqrt(1 - b2 ** t)) / (1 - b1 ** t)
    if update_clipping:
      v = np.maximum(v, eps ** 2)
      u = u / max(np.sqrt(np.mean(g * g / v)), 1.0)
    out.append(u)
  return out


@pytest.mark.parametrize("update_clipping,running_init", [(False, False), (True, False), (True, True)])
def test_adam_atan2_matches_reference(update_clipping, running_init):
  rng = np.random.default_rng(0)
  scales = [1.0, 0.5, 8.0, 0.01, 3.0]  # the 8x spike makes update clipping bite
  grads = [rng.normal(size=(5, 7)).astype(np.float32) * s for s in scales]
  tx = opt_lib.scale_by_adam_atan2(0.9, 0.95, update_clipping=update_clipping, eps=1e-6, running_init=running_init)
  state = tx.init({"w": jnp.zeros((5, 7))})
  expected = _reference_adam_atan2(grads, 0.9, 0.95, 1e-6, update_clipping, running_init)
  for g, ref in zip(grads, expected):
    updates, state = tx.update({"w": jnp.asarray(g)}, state)
    np.testing.assert_allclose(updates["w"], ref, rtol=2e-5, atol=1e-7)
  assert int(state.count) == len(grads)


def test_atan2_update_is_bounded_and_scale_invariant():
  tx = opt_lib.scale_by_adam_atan2(0.9, 0.95, update_clipping=False)
  g = jnp.asarray(np.random.default_rng(1).normal(size=(64,)), jnp.float32)
  small, _ = tx.update({"w": g * 1e-6}, tx.init({"w": g}))
  large, _ = tx.update({"w": g * 1e6}, tx.init({"w": g}))
  np.testing.assert_allclose(small["w"], large["w"], rtol=1e-5)
  assert float(jnp.abs(large["w"]).max()) <= (np.pi / 2) / 0.1 + 1e-5  # |atan2| <= pi/2, bias correction 1/(1-b1)
  zero, _ = tx.update({"w": jnp.zeros(3)}, tx.init({"w": jnp.zeros(3)}))
  assert float(jnp.abs(zero["w"]).max()) == 0.0  # atan2(0, 0) = 0: no epsilon needed


def test_update_clipping_damps_a_gradient_spike_per_tensor():
  kwargs = dict(running_init=True)  # v starts at g^2, so steady gradients give rms = 1 (no clipping)
  clipped = opt_lib.scale_by_adam_atan2(0.9, 0.95, update_clipping=True, **kwargs)
  plain = opt_lib.scale_by_adam_atan2(0.9, 0.95, update_clipping=False, **kwargs)
  params = {"a": jnp.zeros(16), "b": jnp.zeros(16)}
  states = [clipped.init(params), plain.init(params)]
  g = {"a": jnp.ones(16), "b": jnp.ones(16)}
  for _ in range(5):
    outs = [tx.update(g, s) for tx, s in zip((clipped, plain), states)]
    states = [o[1] for o in outs]
  spike = {"a": 100 * jnp.ones(16), "b": jnp.ones(16)}
  (u_clip, _), (u_plain, _) = clipped.update(spike, states[0]), plain.update(spike, states[1])
  assert float(jnp.abs(u_clip["a"]).max()) < 0.25 * float(jnp.abs(u_plain["a"]).max())  # rms(g / sqrt(v)) ~ 4.5
  np.testing.assert_allclose(u_clip["b"], u_plain["b"], rtol=1e-6)  # the other tensor is untouched


def test_weight_decay_mask_skips_norms_and_qk_bias():
  params = hj.abstract_params(hj.get_config("tiny"))
  mask = opt_lib.weight_decay_mask(params)
  assert mask["wte"] and mask["core"]["adapter"]
  block = mask["core"]["layers"][0]
  assert block["attn"]["wqkv"] and block["attn"]["proj"] and block["mlp"]["fc"] and block["mlp"]["proj"]
  assert not block["attn"]["qk_bias"] and not block["norm_1"]["scale"] and not mask["ln_f"]["scale"]


def _opt_config(**overrides):
  c = train_config.get_train_config("base")
  c.optimizer.update(dict(lr=1e-2, weight_decay=0.1, warmup_steps=4, cooldown_steps=4, running_init=False))
  c.optimizer.update(overrides)
  return c


def test_decoupled_weight_decay_follows_the_schedule():
  c = _opt_config()
  tx, schedule = opt_lib.make_optimizer(c, total_steps=12)
  params = {"w": jnp.ones((3, 3)), "norm": {"scale": jnp.ones(3)}}
  state = tx.init(params)
  for step in range(12):
    zero = jax.tree.map(jnp.zeros_like, params)  # atan2(0, 0) = 0: only the decay moves the weights
    updates, state = tx.update(zero, state, params)
    new = optax.apply_updates(params, updates)
    factor = 1 - float(schedule(step)) / c.optimizer.lr * c.optimizer.weight_decay
    np.testing.assert_allclose(new["w"], np.asarray(params["w"]) * factor, rtol=1e-6)
    np.testing.assert_array_equal(new["norm"]["scale"], params["norm"]["scale"])
    params = new
  assert float(schedule(0)) == 0.0 and float(schedule(6)) == pytest.approx(1e-2)


def test_global_gradient_clipping_comes_first():
  c = _opt_config(weight_decay=0.0)
  tx, _ = opt_lib.make_optimizer(c, total_steps=12)
  unclipped = _opt_config(weight_decay=0.0, grad_clip=None)
  tx_plain, _ = opt_lib.make_optimizer(unclipped, total_steps=12)
  params = {"a": jnp.zeros(4), "b": jnp.zeros((2, 2))}
  grads = [{"a": jnp.asarray([3.0, -4.0, 0.0, 12.0]), "b": jnp.asarray([[1.0, 2.0], [0.5, -1.0]])},
           {"a": jnp.asarray([0.1, 0.2, -0.3, 0.0]), "b": jnp.asarray([[0.0, 1.0], [0.0, 0.0]])}]
  s, s_plain = tx.init(params), tx_plain.init(params)
  for g in grads:
    u, s = tx.update(g, s, params)
    scale = min(1.0, 1.0 / float(optax.tree.norm(g)))
    u_ref, s_plain = tx_plain.update(jax.tree.map(lambda x: x * scale, g), s_plain, params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), u, u_ref)


def test_non_finite_gradients_skip_the_step_and_are_counted():
  tx, _ = opt_lib.make_optimizer(_opt_config(warmup_steps=0), total_steps=12)
  params = {"w": jnp.ones((2, 2))}
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.asarray([[1.0, jnp.nan], [0.0, 1.0]])}, state, params)
  assert float(jnp.abs(updates["w"]).max()) == 0.0
  assert int(opt_lib.skipped_steps(state)) == 1 and int(state.notfinite_count) == 1
  updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
  assert float(jnp.abs(updates["w"]).min()) > 0
  assert int(opt_lib.skipped_steps(state)) == 1 and int(state.notfinite_count) == 0
  assert int(opt_lib.applied_updates(state, 2)) == 1


def test_adamw_option_matches_optax_adamw():
  c = _opt_config(name="adamw", eps=1e-8, grad_clip=None, skip_nonfinite=False)
  tx, schedule = opt_lib.make_optimizer(c, total_steps=12)
  ref = optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=opt_lib.weight_decay_mask)
  params = {"w": jnp.ones((3, 2)), "scale": jnp.ones(2)}
  s, s_ref = tx.init(params), ref.init(params)
  for i in range(6):
    g = {"w": jnp.full((3, 2), 0.1 * (i + 1)), "scale": jnp.full(2, -0.2)}
    u, s = tx.update(g, s, params)
    u_ref, s_ref = ref.update(g, s_ref, params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9), u, u_ref)
    params = optax.apply_updates(params, u)


def test_unknown_optimizer_is_an_error():
  with pytest.raises(ValueError, match="adam_atan2"):
    opt_lib.make_optimizer(_opt_config(name="sgd"), total_steps=12)


def test_trapezoid_schedule_shape():
  opt = _opt_config(lr=1.0, min_lr=0.0, warmup_steps=10, cooldown_steps=20).optimizer
  s = schedule_lib.make_schedule(opt, total_steps=100)
  values = np.asarray([float(s(i)) for i in range(101)])
  np.testing.assert_allclose(values[:11], np.linspace(0, 1, 11), atol=1e-6)
  np.testing.assert_allclose(values[10:81], 1.0)
  np.testing.assert_allclose(values[80:], np.linspace(1, 0, 21), atol=1e-6)
  cosine = schedule_lib.make_schedule(_opt_config(lr=1.0, min_lr=0.1, schedule="cosine", warmup_steps=0,
                                                  cooldown_steps=0).optimizer, total_steps=50)
  assert float(cosine(0)) == pytest.approx(1.0) and float(cosine(50)) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="exceeds"):
    schedule_lib.make_schedule(opt, total_steps=25)
  with pytest.raises(ValueError, match="schedule"):
    schedule_lib.make_schedule(_opt_config(schedule="step").optimizer, total_steps=100)
