"""HF <-> Orbax conversion: the round trip is lossless, odd layouts load, and bad checkpoints get named errors."""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import huginn_jax as hj
from huginn_jax import cli
from huginn_jax.checkpoint import hf, safetensors_io


def _tensors(path) -> dict:
  source = hf.open_tensors(path)
  return {k: np.asarray(source.get(k)) for k in source.keys()}


def test_hf_convert_load_export_gives_back_every_tensor(tiny_dir, tmp_path):
  assert cli.main(["convert", tiny_dir, str(tmp_path / "orbax")]) == 0
  config, params = hj.load(tmp_path / "orbax")
  hj.export_hf(tmp_path / "hf", config, params)
  original, exported = _tensors(tiny_dir), _tensors(tmp_path / "hf")
  assert sorted(original) == sorted(exported)
  for key, value in original.items():
    if key == "freqs_cis":  # a buffer recomputed from the config, not a parameter
      np.testing.assert_allclose(exported[key], value, atol=1e-5)
    else:
      assert exported[key].dtype == value.dtype, key
      np.testing.assert_array_equal(exported[key], value, err_msg=key)
  with open(tmp_path / "hf" / "config.json") as f:
    assert hj.from_hf_config(json.load(f)).d_model == config.d_model


def test_orbax_load_equals_hf_load(tiny_model, tmp_path):
  config, params = tiny_model
  hj.save(tmp_path / "o", config, params)
  config2, params2 = hj.load(tmp_path / "o")
  assert config2.to_dict() == config.to_dict()
  chex.assert_trees_all_equal(params, params2)
  _, bf16 = hj.load(tmp_path / "o", dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16))


def test_sharded_export_with_index_loads_back(tiny_model, tmp_path):
  config, params = tiny_model
  hj.export_hf(tmp_path / "sharded", config, params, max_shard_bytes=200_000)
  files = os.listdir(tmp_path / "sharded")
  assert "model.safetensors.index.json" in files
  assert sum(f.endswith(".safetensors") for f in files) > 1
  _, back = hj.load(tmp_path / "sharded")
  chex.assert_trees_all_equal(params, back)


def _rewrite(src, dst, edit):
  """Copies the HF fixture to dst with its tensors passed through edit(dict) -> dict."""
  os.makedirs(dst)
  shutil.copy(os.path.join(src, "config.json"), dst)
  tensors = edit(_tensors(src))
  safetensors_io.write(os.path.join(dst, "model.safetensors"), tensors)
  return dst


def test_lm_head_present_freqs_absent_and_prefixed_keys_load(tiny_model, tiny_dir, tmp_path):
  _, params = tiny_model

  def edit(t):
    t["lm_head.weight"] = t["transformer.wte.weight"]
    del t["freqs_cis"]
    return {f"_orig_mod._original_module.{k}": v for k, v in t.items()}

  _, back = hj.load(_rewrite(tiny_dir, tmp_path / "odd", edit))
  chex.assert_trees_all_equal(params, back)


@pytest.mark.parametrize("edit,error,message", [
    (lambda t: {k: v for k, v in t.items() if k != "transformer.core_block.2.mlp.fc.weight"}, KeyError,
     "transformer.core_block.2.mlp.fc.weight"),
    (lambda t: {**t, "transformer.extra.weight": np.zeros(3, np.float32)}, KeyError, "transformer.extra.weight"),
    (lambda t: {**t, "transformer.adapter.weight": np.zeros((64, 64), np.float32)}, ValueError,
     "transformer.adapter.weight"),
])
def test_bad_checkpoints_name_the_tensor(tiny_dir, tmp_path, edit, error, message):
  bad = _rewrite(tiny_dir, tmp_path / "bad", edit)
  with pytest.raises(error, match=message):
    hj.load(bad)
  assert cli.main(["convert", str(bad), str(tmp_path / "out")]) == 2
  assert not os.path.exists(tmp_path / "out")


def test_missing_checkpoint_and_missing_config(tmp_path, tiny_dir):
  with pytest.raises(FileNotFoundError):
    hj.load(tmp_path / "nothing")
  os.makedirs(tmp_path / "noconfig")
  shutil.copy(os.path.join(tiny_dir, "model.safetensors"), tmp_path / "noconfig")
  with pytest.raises(FileNotFoundError, match="config.json"):
    hj.load(tmp_path / "noconfig")


def test_writes_are_atomic(tiny_model, tmp_path, monkeypatch):
  config, params = tiny_model
  hj.export_hf(tmp_path / "hf", config, params)
  with pytest.raises(FileExistsError):
    hj.export_hf(tmp_path / "hf", config, params)

  def fail(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(safetensors_io, "write", fail)
  with pytest.raises(OSError, match="disk full"):
    hj.export_hf(tmp_path / "hf2", config, params)
  assert sorted(os.listdir(tmp_path)) == ["hf"]  # no partial target, no temporary left behind


def test_pytorch_state_dict_file_loads_when_torch_is_installed(tiny_model, tiny_dir, tmp_path):
  torch = pytest.importorskip("torch", reason="reading .pth needs the optional torch extra: "
                              "`.venv/bin/python -m pip install torch` (e.g. torch==2.13.0, CPU), then rerun")
  _, params = tiny_model
  state = {f"_orig_mod._original_module.{k}": torch.from_numpy(v.copy()) for k, v in _tensors(tiny_dir).items()}
  os.makedirs(tmp_path / "pth")
  shutil.copy(os.path.join(tiny_dir, "config.json"), tmp_path / "pth")
  torch.save(state, tmp_path / "pth" / "model.pth")
  _, back = hj.load(tmp_path / "pth")
  chex.assert_trees_all_equal(params, back)
  _, back_file = hj.load(tmp_path / "pth" / "model.pth")
  chex.assert_trees_all_equal(params, back_file)
