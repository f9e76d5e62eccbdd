"""The train step: one step on one device, the same step on a 2x2x2 mesh of 8 CPU devices, gradient
accumulation, and skipping of non-finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from training_setup import BATCH, SEQ, cache_dir, short_run

import huginn_jax as hj
from huginn_jax import sharding
from huginn_jax.training import config as train_config_lib
from huginn_jax.training import loop
from huginn_jax.training import optimizer as opt_lib
from huginn_jax.training import sampler
from huginn_jax.training import state as state_lib
from huginn_jax.training import step as step_lib


def _batch(accum=1, seed=0):
  rows = np.random.default_rng(seed).integers(0, 256, (accum, BATCH // accum, SEQ + 1))
  return {"inputs": jnp.asarray(rows[..., :-1], jnp.int32), "labels": jnp.asarray(rows[..., 1:], jnp.int32)}


def _single_device_run(model, train, params, batches):
  tx, schedule = opt_lib.make_optimizer(train, train.steps)
  state = state_lib.init_state(model, tx, None, params=params)
  fn = step_lib.jit_train_step(step_lib.make_train_step(model, train, tx, schedule), donate=False)
  history, states = [], []
  for batch in batches:
    state, metrics = fn(state, batch)
    history.append(jax.device_get(metrics))
    states.append(state)
  return states, history, fn


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory):
  """Two steps on one device of the loop tests' short-run training config, on the tiny model with one layer per
  block: each test here compiles a train step of its own, and one layer a block halves every compilation."""
  cache = cache_dir(tmp_path_factory)
  loop.enable_compilation_cache(cache)
  _, train = short_run("unused", "unused", cache, tiny_dir)
  model = hj.get_config("tiny", n_layers_prelude=1, n_layers_core=1, n_layers_coda=1)
  params = hj.init(model, jax.random.key(0))
  batches = [_batch(seed=0), _batch(seed=1)]
  states, history, fn = _single_device_run(model, train, params, batches)
  return model, train, params, batches, states, history, fn


def test_one_step_on_one_device(reference):
  model, train, params, _, states, history, _ = reference
  state = states[-1]
  assert int(state.step) == 2
  base = jax.random.key(train.seed)
  for step, metrics in enumerate(history):
    depth_key, _ = jax.random.split(sampler.step_key(base, step))
    n, k = sampler.sample_depth(depth_key, 4, 2)
    assert (int(metrics["n"]), int(metrics["k"])) == (int(n), int(k))
    assert np.isfinite(metrics["loss"]) and float(metrics["loss"]) > 3.0  # random tokens: nothing to predict
    assert float(metrics["grad_norm"]) > 0 and not bool(metrics["skipped"])
  assert float(history[0]["lr"]) == pytest.approx(train.optimizer.lr)
  changed = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()) > 0, state.params, params)
  assert all(jax.tree.leaves(changed)), "every parameter should get an update"


def test_chunked_loss_gives_the_same_steps(reference):
  model, train, params, batches, ref_states, ref_history, _ = reference
  for chunk in (0, 7):  # all at once; chunks that do not divide the sequence
    other = train.copy_and_resolve_references()
    other.loss_chunk = chunk
    states, history, _ = _single_device_run(model, other, params, batches)
    assert [float(h["loss"]) for h in history] == pytest.approx([float(h["loss"]) for h in ref_history], rel=1e-5)
    for a, b in zip(jax.tree.leaves(states[-1].params), jax.tree.leaves(ref_states[-1].params)):
      assert rel_err(a, b) < 1e-4
  bad = train.copy_and_resolve_references()
  bad.loss_chunk = -1
  with pytest.raises(ValueError, match="train.loss_chunk"):
    train_config_lib.validate(bad, model)


def test_step_on_a_2x2x2_mesh_equals_one_device(reference):
  assert jax.device_count() == 8, "tests/conftest.py should simulate 8 CPU devices"
  model, train, params, batches, ref_states, ref_history, _ = reference
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.rules_table()
  tx, schedule = opt_lib.make_optimizer(train, train.steps)
  param_sh = sharding.param_shardings(model, mesh, rules)
  state_sh = state_lib.state_shardings(model, tx, mesh, param_sh)
  state = state_lib.init_state(model, tx, state_sh, params=jax.device_put(params, param_sh))
  assert state.params["core"]["layers"][0]["mlp"]["fc"].sharding.spec == jax.sharding.PartitionSpec(
      "fsdp", None, "tensor")
  batch_sh = step_lib.batch_sharding(mesh, rules, batches[0]["inputs"].shape)
  fn = step_lib.jit_train_step(step_lib.make_train_step(model, train, tx, schedule, mesh=mesh, rules=rules),
                               state_sh, {"inputs": batch_sh, "labels": batch_sh})
  # The atan2 update is a bounded function of m / sqrt(v), so from the second step on, rounding noise in tiny
  # gradient components (sums in another order on the mesh) moves single weights by ~1e-5 of an update step;
  # the step itself (loss, gradient norm, the new params after one step) agrees to 1e-5.
  param_tol = [1e-5, 1e-4]
  for batch, ref, ref_state, tol in zip(batches, ref_history, ref_states, param_tol):
    state, metrics = fn(state, jax.device_put(batch, batch_sh))
    for name in ("loss", "grad_norm", "update_norm", "n", "k"):
      assert rel_err(metrics[name], ref[name]) < 1e-5, name
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
      assert rel_err(a, b) < tol
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(ref_state.opt_state)):
      assert rel_err(a, b) < 1e-5
  assert len(state.params["wte"].sharding.device_set) == 8
  mu = state.opt_state.inner_state[1].mu["wte"]
  assert mu.sharding.spec == state.params["wte"].sharding.spec  # moments sharded like their params


def test_gradient_accumulation_equals_one_big_batch(reference):
  # Each sequence draws its initial state from its own key, so 2 micro-batches of 2 are the same step as one
  # batch of 4.
  model, train, params, batches, ref_states, ref_history, _ = reference
  train = train.copy_and_resolve_references()
  train.grad_accum_steps = 2
  split = [{k: v.reshape(2, BATCH // 2, SEQ) for k, v in b.items()} for b in batches[:1]]
  (state,), history, _ = _single_device_run(model, train, params, split)
  assert rel_err(history[0]["loss"], ref_history[0]["loss"]) < 1e-6
  assert rel_err(history[0]["grad_norm"], ref_history[0]["grad_norm"]) < 1e-5
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_states[0].params)):
    assert rel_err(a, b) < 1e-5


def test_non_finite_gradients_skip_the_step(reference):
  model, train, params, batches, _, _, fn = reference
  tx, _ = opt_lib.make_optimizer(train, train.steps)
  broken = jax.tree.map(lambda x: x, params)
  broken["ln_f"]["scale"] = broken["ln_f"]["scale"].at[0].set(jnp.inf)
  state = state_lib.init_state(model, tx, None, params=broken)
  new, metrics = fn(state, batches[0])
  assert bool(metrics["skipped"]) and int(metrics["skipped_total"]) == 1 and int(metrics["skipped_in_a_row"]) == 1
  assert int(new.step) == 1  # the step counter (and so the next depth draw) still advances
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(broken)):
    np.testing.assert_array_equal(a, b)
