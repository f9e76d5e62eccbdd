"""The ahead-of-time memory check on a simulated 8-device mesh: per-device sizes of sharded inputs, the compiler's
figures for the tiny model's loss gradient, and donation showing up as aliased memory."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import huginn_jax as hj
from huginn_jax import aot

P = jax.sharding.PartitionSpec


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((2, 4, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _fsdp(mesh, shape):
  """Test-local layout: the first dimension the fsdp axis divides is split over it."""
  size = mesh.shape["fsdp"]
  dim = next(i for i, n in enumerate(shape) if n % size == 0)
  return jax.sharding.NamedSharding(mesh, P(*([None] * dim + ["fsdp"])))


def _abstract(config, mesh, batch=8, seq=16):
  params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=_fsdp(mesh, p.shape)),
                        hj.abstract_params(config))
  batch_sharding = jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), None))
  tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=batch_sharding)
  return params, tokens


def _param_bytes(config):
  return sum(math.prod(p.shape) * np.dtype(p.dtype).itemsize for p in jax.tree.leaves(hj.abstract_params(config)))


def test_loss_gradient_memory_on_a_simulated_mesh(mesh):
  config = hj.get_config("tiny")
  params, tokens = _abstract(config, mesh)
  grad = jax.grad(functools.partial(hj.loss, config=config, depth=(1, 2), init_scale=0.0))
  report = aot.memory_analysis(grad, params, tokens, tokens, names=["params", "tokens", "labels"])

  assert report.inputs["params"] * 4 == _param_bytes(config), "params are split 4 ways over fsdp"
  assert report.inputs["tokens"] == 8 * 16 * 4 // 8, "the batch is split 8 ways over data x fsdp"
  assert report.arguments == sum(report.inputs.values())
  assert report.outputs >= report.inputs["params"], "the gradients are at least as large as the param shards"
  assert report.temporaries > 0 and report.total >= report.arguments + report.temporaries
  text = str(report)
  assert "input: params" in text and "temporaries" in text and "GiB" in text


def test_donated_state_is_counted_once(mesh):
  config = hj.get_config("tiny")
  params, tokens = _abstract(config, mesh)
  momentum = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float32, sharding=p.sharding), params)

  def step(params, momentum, tokens):  # a momentum update with a stand-in gradient: cheap to compile
    grads = jax.tree.map(lambda p: jnp.sin(p) * jnp.mean(tokens), params)
    momentum = jax.tree.map(lambda m, g: 0.9 * m + g, momentum, grads)
    return jax.tree.map(lambda p, m: p - 0.1 * m, params, momentum), momentum

  kept = aot.memory_analysis(step, params, momentum, tokens, names=["params", "momentum", "batch"])
  donated = aot.memory_analysis(step, params, momentum, tokens, names=["params", "momentum", "batch"],
                                donate_argnums=(0, 1))
  state = kept.inputs["params"] + kept.inputs["momentum"]
  assert kept.aliased == 0 and donated.aliased == state
  assert donated.total < kept.total
  if kept.peak:  # backends that estimate a peak see the donated state reused for the outputs
    assert donated.peak < kept.peak


def test_names_must_match_the_inputs(mesh):
  with pytest.raises(ValueError, match="one name per positional input"):
    aot.memory_analysis(lambda x: x * 2, jax.ShapeDtypeStruct((4,), jnp.float32), names=["a", "b"])


@pytest.mark.parametrize("accelerator,topology,chip_config", [
    ("v4-32", "v4:2x2x4", "megacore"),
    ("v5p-128", "v5:4x4x4", "megacore"),
    ("v5litepod-64", "v5e:8x8", "default"),
    ("v6e-256", "v6e:16x16", "default"),
    ("v6e-8", "v6e:2x4", "default"),
])
def test_tpu_topology_of_accelerator_types(accelerator, topology, chip_config):
  desc = aot.tpu_topology(accelerator)
  assert desc["topology_name"] == topology and desc["chip_config_name"] == chip_config
  chips = math.prod(int(n) for n in topology.split(":")[1].split("x"))
  assert chips == (int(accelerator.rsplit("-", 1)[1]) // (2 if chip_config == "megacore" else 1))


@pytest.mark.parametrize("accelerator", ["v7-8", "v5p-12", "tpu"])
def test_tpu_topology_rejects_unknown_types(accelerator):
  with pytest.raises(ValueError, match=accelerator):
    aot.tpu_topology(accelerator)


def test_tpu_mesh_without_libtpu_says_what_to_install(monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "libtpu", None)  # makes `import libtpu` fail
  with pytest.raises(RuntimeError, match=r"needs libtpu: pip install 'jax\[tpu\]'"):
    aot.tpu_mesh("v5p-8", (1, 4, 1), ("data", "fsdp", "tensor"))
