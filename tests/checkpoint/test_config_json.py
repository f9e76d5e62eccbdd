"""Saved model configs (``huginn_config.json``) and dtypes: a missing or malformed field is an error naming the file
and the field, never the value of some preset; params only in floating dtypes."""

import json
import os

import pytest

import huginn_jax as hj
from huginn_jax import cli
from huginn_jax.checkpoint import io


def _write(path, fields):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, io.CONFIG_FILE), "w") as f:
    f.write(fields if isinstance(fields, str) else json.dumps(fields))
  return str(path)


def _fields(**changes):
  fields = hj.get_config("tiny", max_seq_len=512, mean_recurrence=4, rope_base=1e4).to_dict()
  fields.update(changes)
  return fields


def test_missing_fields_are_an_error_not_the_tiny_presets_values(tmp_path):
  for field in ("max_seq_len", "mean_recurrence", "rope_base", "intermediate_size"):
    fields = _fields()
    del fields[field]
    path = _write(tmp_path / field, fields)
    with pytest.raises(ValueError, match=rf"huginn_config.json lacks the model config fields \['{field}'\]"):
      hj.load(path)  # the error comes before any weights are read


def test_optional_fields_take_their_documented_defaults(tmp_path):
  fields = _fields()
  for field in io.OPTIONAL_FIELDS:
    del fields[field]
  config = io.config_from_json(os.path.join(_write(tmp_path, fields), io.CONFIG_FILE))
  base = hj.config.base_config()
  assert all(config[f] == base[f] for f in io.OPTIONAL_FIELDS)
  assert (config.max_seq_len, config.mean_recurrence, config.rope_base) == (512, 4, 1e4)  # the file's, not tiny's


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ([1, 2], "must hold a JSON object of model config fields, got a list"),
    (_fields(d_model="sixty-four"), "field 'd_model' must be a int, got 'sixty-four'"),
    (_fields(d_model=64.9), "field 'd_model' must be a int, got 64.9"),
    (_fields(n_heads=3), "d_model \\(64\\) must equal n_heads \\* head_dim"),
])
def test_malformed_files_name_the_file_and_the_field(tmp_path, content, message):
  path = os.path.join(_write(tmp_path, content if isinstance(content, str) else json.dumps(content)), io.CONFIG_FILE)
  with pytest.raises(ValueError, match=f"{path}.*{message}"):
    io.config_from_json(path)


def test_only_floating_dtypes(tmp_path, tiny_dir, capsys):
  for dtype in ("int8", "float64", "banana", "bool"):
    with pytest.raises(ValueError, match=f"dtype '{dtype}' is not supported for params; choose one of"):
      hj.load(tiny_dir, dtype=dtype)
  assert cli.main(["export", tiny_dir, str(tmp_path / "int8"), "--dtype", "int8"]) == 2
  assert cli.main(["convert", tiny_dir, str(tmp_path / "f64"), "--dtype", "float64"]) == 2
  assert cli.main(["export", tiny_dir, str(tmp_path / "banana"), "--dtype", "banana"]) == 2
  err = capsys.readouterr().err
  assert err.count("is not supported for params") == 3 and "Traceback" not in err
  assert not any(os.path.exists(tmp_path / name) for name in ("int8", "f64", "banana"))
  config, _ = hj.load(tiny_dir, dtype="bfloat16")
  assert config.param_dtype == "bfloat16"
