"""FLOP and byte counts behind MFU and bandwidth figures, checked against the design figures and XLA's own count."""

import chex
import jax
import jax.numpy as jnp
import pytest

import huginn_jax as hj
from huginn_jax import api, flops
from huginn_jax.attention import SelfAttentionMask


def test_forward_flops_of_huginn_0125():
  config = hj.get_config("huginn-0125")
  # DESIGN.md section 5: one forward token at r=32 costs ~110 GFLOP (4096-token context)
  assert flops.forward_flops_per_token(config, 4096, 32) == pytest.approx(110e9, rel=0.05)
  # without attention it is 2 FLOPs per parameter of the unrolled model (the core counted 32 times)
  counts = flops.param_counts(config)
  unrolled = counts["outer"] + 32 * counts["core"]
  assert flops.forward_flops_per_token(config, 0, 32) == pytest.approx(2 * unrolled, rel=0.01)


def test_param_counts_add_up_to_the_model():
  for name in ("tiny", "huginn-0125"):
    config = hj.get_config(name)
    counts = flops.param_counts(config)
    assert counts["outer"] + counts["core"] == hj.num_params(config)


def test_train_flops_count_gradient_iterations_three_times():
  config = hj.get_config("tiny")
  core = flops.forward_flops_per_token(config, 32, 1) - flops.forward_flops_per_token(config, 32, 0)
  base = flops.train_flops_per_token(config, 32, 0, 0)
  assert flops.train_flops_per_token(config, 32, 5, 0) == pytest.approx(base + 5 * core)
  assert flops.train_flops_per_token(config, 32, 0, 2) == pytest.approx(base + 6 * core)
  assert base == pytest.approx(3 * flops.forward_flops_per_token(config, 32, 0))


def test_decode_bytes_of_huginn_0125_match_the_design_figure():
  config = hj.get_config("huginn-0125")
  # DESIGN.md section 5: decoding at r=32 reads ~104 GB of weights per token
  weights = flops.decode_bytes_per_step(config, num_steps=32, batch=1, context_len=0)
  assert weights == pytest.approx(104e9, rel=0.05)
  # keys and values: every (layer, iteration) reads its slot; linear in batch and context
  kv_1 = flops.decode_bytes_per_step(config, num_steps=32, batch=1, context_len=100) - weights
  kv_8 = flops.decode_bytes_per_step(config, num_steps=32, batch=8, context_len=100) - weights
  assert kv_1 == (2 + 2 + 32 * 4) * 2 * 100 * 5280 * 2
  assert kv_8 == pytest.approx(8 * kv_1)


def _xla_flops(fn, *args) -> float:
  return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


def test_matmul_counts_agree_with_xla():
  """XLA's cost analysis of one core iteration and of one block (dense masked attention over all S keys) matches
  the formula evaluated at S keys within 3% (the rest is elementwise work the formula leaves out)."""
  config = hj.get_config("tiny", d_model=256, n_heads=4, head_dim=64, intermediate_size=768, vocab_size=512)
  params = hj.init(config, jax.random.key(0))
  seq = 128
  x = jnp.ones((1, seq, config.d_model))
  positions = jnp.arange(seq)[None]

  def core(params, s, e):
    return api.model_from_params(params, config).core(s, e, positions, SelfAttentionMask())

  def block(params, x):
    return api.model_from_params(params, config).prelude[0](x, positions, SelfAttentionMask())

  core_xla = _xla_flops(core, params, x, x)
  block_xla = _xla_flops(block, params, x)
  core_formula = seq * flops.core_step_flops(config, seq)
  block_formula = seq * (flops.core_step_flops(config, seq) - 4 * config.d_model ** 2) / config.n_layers_core
  chex.assert_trees_all_close(core_xla / core_formula, 1.0, atol=0.03)
  chex.assert_trees_all_close(block_xla / block_formula, 1.0, atol=0.03)
