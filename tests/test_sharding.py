"""Mesh construction, the logical-axis rules table, and the errors for shardings that do not fit."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

import huginn_jax as hj
from huginn_jax import sharding


def test_mesh_from_config_fills_one_axis():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}).shape["fsdp"] == jax.device_count()
  small = sharding.make_mesh({"data": 2}, devices=jax.devices()[:2])
  assert dict(small.shape) == {"data": 2, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("shape,match", [
    ({"data": 4, "fsdp": 4, "tensor": 1}, "needs 16 devices but 8 are available"),
    ({"data": -1, "fsdp": 3, "tensor": 1}, "multiple of 3 devices"),
    ({"data": -1, "fsdp": -1}, "At most one mesh axis"),
    ({"data": 8, "pipeline": 1}, "Unknown mesh axes"),
])
def test_mesh_that_does_not_fit_the_devices_is_an_error(shape, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(shape)


def test_param_specs_of_the_tiny_model():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  specs = sharding.param_specs(hj.get_config("tiny"), sharding.rules_table(), mesh)
  block = specs["core"]["layers"][0]
  assert specs["wte"] == P("tensor", "fsdp")
  assert block["attn"]["wqkv"] == P("fsdp", None, "tensor", None)
  assert block["attn"]["proj"] == P("tensor", None, "fsdp")
  assert block["mlp"]["fc"] == P("fsdp", None, "tensor")
  assert block["mlp"]["proj"] == P("tensor", "fsdp")
  assert block["norm_1"]["scale"] == P(None)
  assert specs["core"]["adapter"] == P(None, "fsdp")


def test_axis_that_does_not_divide_is_an_error_naming_both():
  # huginn-0125 has 55 heads: a tensor axis of 2 cannot shard them
  config = hj.get_config("huginn-0125")
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  with pytest.raises(ValueError, match=r"logical axis 'heads'.* size 55 is not divisible by mesh axis 'tensor' of "
                                       r"size 2"):
    sharding.param_specs(config, sharding.rules_table(), mesh)
  # the documented fix: keep attention heads unsharded and shard the MLP (17920) on tensor
  specs = sharding.param_specs(config, sharding.rules_table({"heads": None}), mesh)
  assert specs["core"]["layers"][0]["mlp"]["fc"] == P("fsdp", None, "tensor")
  assert specs["core"]["layers"][0]["attn"]["wqkv"] == P("fsdp", None, None, None)


def test_rules_errors():
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    sharding.rules_table({"heads": "model"})
  with pytest.raises(ValueError, match="would shard two dimensions"):
    sharding.logical_to_spec(("embed", "mlp"), sharding.rules_table({"mlp": "fsdp"}))
  with pytest.raises(ValueError, match="No sharding rule for logical axis 'experts'"):
    sharding.logical_to_spec(("experts",), sharding.rules_table())


def test_batch_sharding_must_divide():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.rules_table()
  ok = sharding.sharding_for(mesh, rules, (None, "act_batch", "act_seq"), (1, 8, 16))
  assert ok.spec == P(None, ("data", "fsdp"), None)
  with pytest.raises(ValueError, match=r"size 6 is not divisible by mesh axis \('data', 'fsdp'\) of size 4"):
    sharding.sharding_for(mesh, rules, (None, "act_batch", "act_seq"), (1, 6, 16), name="batch")


def test_single_host_does_not_initialize_distributed(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  assert sharding.maybe_initialize_distributed("auto") is False
  assert sharding.maybe_initialize_distributed(False) is False


def _constraint_specs(jaxpr) -> set:
  from jaxpr_walk import eqns
  return {tuple(eqn.params["sharding"].spec) for eqn, _ in eqns(jaxpr) if eqn.primitive.name == "sharding_constraint"}


def test_model_constrains_its_activations_at_the_logical_rule_names():
  import jax.numpy as jnp
  import numpy as np
  config = hj.get_config("tiny")
  params = hj.init(config, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (4, 16)), jnp.int32)
  run = lambda p: hj.forward(p, tokens, config=config, num_steps=2, init_scale=0.0).logits  # noqa: E731
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})

  def constrained(p):  # the context is entered inside the traced function, as the train step does
    with sharding.activation_sharding(mesh, sharding.rules_table({"act_mlp": None})):
      return run(p)

  assert not _constraint_specs(jax.make_jaxpr(run)(params).jaxpr)  # no mesh active: no constraint
  specs = _constraint_specs(jax.make_jaxpr(constrained)(params).jaxpr)
  sharded = jax.jit(constrained)(params)
  batch = ("data", "fsdp")
  assert (batch, None, None) in specs  # act_embed: the embedding, block outputs, the recurrent state
  assert (batch, None, "tensor", None) in specs  # act_heads: q, k, v and the attention output
  assert (batch, None, "tensor") in specs  # act_vocab: the logits
  assert (batch, None, None) in specs and len(specs) == 3  # act_mlp overridden to None: the MLP hidden is (batch,)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(jax.jit(run)(params)), rtol=1e-5, atol=1e-5)


def test_activation_axis_that_does_not_divide_is_an_error():
  import jax.numpy as jnp
  config = hj.get_config("tiny")
  params = hj.init(config, jax.random.key(0))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 8})  # 4 heads cannot be split 8 ways

  def constrained(p):
    with sharding.activation_sharding(mesh, sharding.rules_table()):
      return hj.forward(p, jnp.zeros((1, 8), jnp.int32), config=config, num_steps=1, init_scale=0.0)

  with pytest.raises(ValueError, match=r"logical axis 'act_heads'.* size 4 is not divisible by mesh axis 'tensor'"):
    jax.make_jaxpr(constrained)(params)
