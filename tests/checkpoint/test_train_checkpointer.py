"""The Orbax train checkpointer: keep-K rotation, exact restore of state and data position, and clear refusals."""

import jax
import numpy as np
import pytest

import huginn_jax as hj
from huginn_jax.checkpoint.manager import TrainCheckpointer, flatten_state, unflatten_state
from huginn_jax.data import pipeline, sources
from huginn_jax.training import config as train_config
from huginn_jax.training import loop
from huginn_jax.training import optimizer as opt_lib
from huginn_jax.training import state as state_lib


@pytest.fixture(scope="module")
def setup(tiny_model):
  config, params = tiny_model
  train = train_config.get_train_config("tiny_cpu")
  tx, _ = opt_lib.make_optimizer(train, train.steps)
  state = state_lib.init_state(config, tx, None, params=params)
  return config, tx, state


def _iterator(seed=0):
  rows = np.arange(40 * 9).reshape(40, 9)
  return pipeline.make_iterator(sources.ArraySource(rows), seq_len=8, global_batch=4, seed=seed,
                                process_index=0, process_count=1)


def test_flatten_round_trip(setup):
  _, _, state = setup
  flat = flatten_state(state)
  assert "params.core.layers.0.attn.wqkv" in flat and "step" in flat
  assert any(name.startswith("opt_state.") and name.endswith(".mu.wte") for name in flat)
  back = unflatten_state(flat, state)
  assert jax.tree.structure(back) == jax.tree.structure(state)


def test_keeps_the_last_k_and_restores_state_and_data_position(tmp_path, setup):
  config, tx, state = setup
  it = _iterator()
  with TrainCheckpointer(tmp_path, keep=2) as ckpt:
    for step in range(1, 5):
      next(it)
      state = state._replace(step=state.step + 1)
      assert ckpt.save(step, state, it, {"model_config": config.to_dict()})
  expected = next(it)
  with TrainCheckpointer(tmp_path, keep=2) as ckpt:
    assert ckpt.all_steps() == [3, 4]
    fresh = _iterator()
    restored, meta = ckpt.restore(state_lib.abstract_state(config, tx), fresh, model_config=config.to_dict())
  assert int(restored.step) == int(state.step) == 4 and meta["model_config"]["d_model"] == 64
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(next(fresh)["inputs"], expected["inputs"])


def test_refuses_other_shapes_and_optimizers(tmp_path, setup):
  config, tx, state = setup
  with TrainCheckpointer(tmp_path) as ckpt:
    ckpt.save(1, state, None, {"model_config": config.to_dict()})
  ckpt = TrainCheckpointer(tmp_path)
  wider = hj.get_config("tiny", intermediate_size=320)
  with pytest.raises(ValueError, match=r"another model shape \(intermediate_size=160 there, 320 here\)"):
    ckpt.restore(state_lib.abstract_state(wider, tx), model_config=wider.to_dict())
  with pytest.raises(ValueError, match=r"params.coda.0.mlp.fc has shape \(64, 2, 160\) there but \(64, 2, 320\)"):
    ckpt.restore(state_lib.abstract_state(wider, tx))  # no config to compare: the shapes still catch it
  unclipped = train_config.get_train_config("tiny_cpu")
  unclipped.optimizer.grad_clip = None  # another optimizer chain: its state has another structure
  other_tx, _ = opt_lib.make_optimizer(unclipped, unclipped.steps)
  with pytest.raises(ValueError, match="does not hold this train state"):
    ckpt.restore(state_lib.abstract_state(config, other_tx))
  with pytest.raises(ValueError, match="no data iterator state"):
    ckpt.restore(state_lib.abstract_state(config, tx), _iterator())
  ckpt.close()
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    TrainCheckpointer(tmp_path / "empty").restore(state_lib.abstract_state(config, tx))


def test_finetune_params_from_a_converted_checkpoint(tmp_path, tiny_model):
  config, params = tiny_model
  hj.save(tmp_path / "orbax", config, params)
  from huginn_jax import sharding
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = sharding.param_shardings(config, mesh, sharding.rules_table())
  loaded = loop.load_finetune_params(str(tmp_path / "orbax"), hj.get_config("tiny"), shardings)
  assert loaded["wte"].sharding.spec == shardings["wte"].spec
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
