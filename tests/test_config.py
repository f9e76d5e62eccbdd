"""Config presets, validation errors, and HF config.json conversion."""

import json
import os

import pytest

import huginn_jax as hj
from huginn_jax import config as config_lib


def test_huginn_0125_has_the_published_shape_and_parameter_count():
  c = hj.get_config("huginn-0125")
  assert (c.d_model, c.n_heads, c.head_dim, c.intermediate_size, c.vocab_size) == (5280, 55, 96, 17920, 65536)
  assert (c.n_layers_prelude, c.n_layers_core, c.n_layers_coda) == (2, 4, 2)
  assert (c.mean_recurrence, c.mean_backprop_depth, c.max_seq_len, c.rope_base) == (32, 8, 4096, 50000.0)
  assert hj.num_params(c) == 3_564_976_800


def test_num_params_agrees_with_the_abstract_param_tree():
  import jax
  import numpy as np
  for name in ("tiny", "small", "huginn-0125"):
    c = hj.get_config(name)
    leaves = jax.tree.leaves(hj.abstract_params(c))
    assert sum(int(np.prod(x.shape)) for x in leaves) == hj.num_params(c), name


@pytest.mark.parametrize("field,value,message", [
    ("head_dim", 15, "d_model"),
    ("n_heads", 3, "d_model"),
    ("d_model", 0, "positive"),
    ("mean_recurrence", -1, "positive"),
    ("compute_dtype", "float8", "compute_dtype"),
    ("attention_impl", "flash", "attention_impl"),
])
def test_invalid_fields_name_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    hj.get_config("tiny", **{field: value})


def test_odd_head_dim_is_rejected():
  with pytest.raises(ValueError, match="head_dim must be even"):
    hj.get_config("tiny", d_model=60, n_heads=4, head_dim=15)


def test_unknown_preset_and_unknown_override_are_errors():
  with pytest.raises(ValueError, match="Unknown config preset"):
    hj.get_config("huginn-9000")
  with pytest.raises(ValueError, match="Unknown config field"):
    hj.get_config("tiny", n_layer=3)


def test_hf_config_of_the_fixture_gives_the_tiny_shape(tiny_dir):
  c = config_lib.from_hf_config(os.path.join(tiny_dir, "config.json"))
  tiny = hj.get_config("tiny")
  for field in ("vocab_size", "d_model", "n_heads", "head_dim", "intermediate_size", "n_layers_prelude",
                "n_layers_core", "n_layers_coda", "max_seq_len", "norm_eps", "rope_base", "qk_bias",
                "mean_recurrence", "mean_backprop_depth"):
    assert c[field] == tiny[field], field


def test_hf_config_round_trip():
  c = hj.get_config("huginn-0125")
  back = config_lib.from_hf_config(json.loads(json.dumps(hj.to_hf_config(c))))
  for field in ("vocab_size", "d_model", "n_heads", "head_dim", "intermediate_size", "max_seq_len", "rope_base",
                "mean_recurrence", "mean_backprop_depth", "qk_bias"):
    assert back[field] == c[field], field


@pytest.mark.parametrize("key,value,message", [
    ("mlp_class_name", "BaseMLP", "mlp_class_name"),
    ("injection_type", "add", "injection_type"),
    ("test_time_noise", 0.5, "test_time_noise"),
    ("num_key_value_heads", 2, "grouped-query"),
])
def test_unsupported_hf_configs_are_rejected(tiny_dir, key, value, message):
  with open(os.path.join(tiny_dir, "config.json")) as f:
    hf = json.load(f)
  hf[key] = value
  with pytest.raises(ValueError, match=message):
    config_lib.from_hf_config(hf)


def test_remat_policy_is_not_a_model_field_any_more():
  with pytest.raises(ValueError, match="remat_policy.*moved out of the model config.*train.remat_policy"):
    hj.get_config("tiny", remat_policy="none")


def test_shape_fields_are_one_list_read_from_configs_and_json_dicts():
  config = hj.get_config("tiny")
  fields = config_lib.shape_fields(config)
  assert tuple(fields) == config_lib.SHAPE_FIELDS and fields["d_model"] == 64
  assert config_lib.shape_fields(json.loads(json.dumps(config.to_dict()))) == fields
  assert "attention_impl" not in fields  # a runtime choice, not the checkpoint's shape
