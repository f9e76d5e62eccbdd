"""The compiled decoding program: no host round trips unless streaming, no whole-cache conversions, and float32
weights cast to the compute dtype once, not in the token loop."""

import functools
import importlib
import re

import jax
import numpy as np
import pytest

import huginn_jax as hj
from huginn_jax.decoding import cache as cache_lib
from jaxpr_walk import casts_in_loops

generate_lib = importlib.import_module("huginn_jax.decoding.generate")  # the package re-exports the function


@pytest.fixture(scope="module")
def bf16_model():
  config = hj.get_config("tiny", compute_dtype="bfloat16", param_dtype="bfloat16")
  return config, hj.init(config, jax.random.key(0))


def _hlo(model, **kwargs):
  config, params = model
  kwargs = {"max_new_tokens": 4, "num_steps": 3, "init_scale": 0.0, **kwargs}
  return generate_lib.lower_generate(params, np.zeros((1, 6), np.int32), config=config, **kwargs).compile().as_text()


@pytest.mark.parametrize("cache", ["full", "latest-m4"])
def test_the_bf16_decoding_program_never_converts_the_whole_cache(bf16_model, cache):
  """A float op on the whole bf16 cache is run in f32 on XLA CPU: the cache stays uint16 inside the program."""
  config = bf16_model[0]
  layout = cache_lib.cache_layout(cache, config, 3)
  whole = f"[{layout.n_slots},1,{config.n_heads},10,{config.head_dim}]"  # [slots, B, H, T, D]
  hlo = _hlo(bf16_model, cache=cache)
  assert f"u16{whole}" in hlo  # the cache is there, as bits
  float_ops = [line for line in hlo.splitlines() if re.search(rf"= (f32|bf16){re.escape(whole)}", line)]
  assert not float_ops, float_ops[:3]


def test_no_host_callback_unless_streaming(bf16_model):
  callback = re.compile(r"custom_call_target=\"[^\"]*callback", re.IGNORECASE)
  assert not callback.search(_hlo(bf16_model))
  assert not callback.search(_hlo(bf16_model, draft_steps=2, lookahead=2))
  assert callback.search(_hlo(bf16_model, stream=lambda *a: None))  # the check can see a callback when there is one


def test_float32_weights_are_cast_once_outside_the_token_loop():
  config = hj.get_config("tiny", compute_dtype="bfloat16", param_dtype="float32")
  params = hj.init(config, jax.random.key(0))
  shapes = {tuple(w.shape) for w in jax.tree.leaves(params) if w.ndim >= 2}
  make_jaxpr = lambda *args, config, spec: jax.make_jaxpr(  # noqa: E731
      functools.partial(generate_lib._generate_impl, config=config, spec=spec))(*args)
  for kwargs in ({}, {"exit_criterion": "kl"}, {"draft_steps": 2, "lookahead": 2}):
    jaxpr = generate_lib.generate(params, np.zeros((1, 6), np.int32), config=config, max_new_tokens=4, num_steps=3,
                                  init_scale=0.0, _run=make_jaxpr, **kwargs).jaxpr
    assert not casts_in_loops(jaxpr, shapes), kwargs
    assert any(eqn.primitive.name == "while" for eqn in jaxpr.eqns)  # there is a loop to check
