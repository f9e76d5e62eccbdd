"""Our streaming safetensors reader/writer agrees with the reference safetensors library."""

import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from huginn_jax.checkpoint import safetensors_io


def test_reader_matches_the_safetensors_library(tiny_dir):
  path = os.path.join(tiny_dir, "model.safetensors")
  ref = load_file(path)
  ours = safetensors_io.SafetensorsFile(path)
  assert sorted(ours.keys()) == sorted(ref)
  for key, value in ref.items():
    np.testing.assert_array_equal(ours.get(key), value)


def test_writer_output_is_read_back_by_the_library(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {"a": rng.normal(size=(3, 5)).astype(np.float32), "b": np.arange(7, dtype=np.int64)}
  safetensors_io.write(tmp_path / "x.safetensors", tensors, metadata={"format": "pt"})
  back = load_file(tmp_path / "x.safetensors")
  for key, value in tensors.items():
    np.testing.assert_array_equal(back[key], value)


def test_bfloat16_round_trip_and_library_written_files(tmp_path):
  x = np.random.default_rng(1).normal(size=(4, 6)).astype(ml_dtypes.bfloat16)
  safetensors_io.write(tmp_path / "b.safetensors", {"x": x})
  back = safetensors_io.SafetensorsFile(tmp_path / "b.safetensors")
  assert back.dtype("x") == np.dtype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(back.get("x"), x)
  save_file({"y": np.ones((2, 2), np.float16)}, str(tmp_path / "lib.safetensors"))
  np.testing.assert_array_equal(safetensors_io.SafetensorsFile(tmp_path / "lib.safetensors").get("y"), 1)


def test_streamed_write_checks_order_and_leaves_nothing_on_failure(tmp_path):
  shapes = {"a": ((2,), np.float32), "b": ((3,), np.float32)}
  stream = iter([("b", np.zeros(3, np.float32)), ("a", np.zeros(2, np.float32))])
  with pytest.raises(ValueError, match="out of order"):
    safetensors_io.write(tmp_path / "s.safetensors", stream, shapes=shapes)
  assert os.listdir(tmp_path) == []


def test_not_a_safetensors_file_is_a_clear_error(tmp_path):
  (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 16)
  with pytest.raises(ValueError, match="not a safetensors file"):
    safetensors_io.SafetensorsFile(tmp_path / "junk.safetensors")
