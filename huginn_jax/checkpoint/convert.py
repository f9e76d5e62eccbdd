"""``huginn-jax convert``: an HF/PyTorch checkpoint to an Orbax directory, streamed one tensor at a time."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from huginn_jax.checkpoint import hf
from huginn_jax.checkpoint.io import open_hf, progress, save


def convert(src, dst, *, dtype=None, overwrite: bool = False, show_progress: bool = True) -> str:
  """Converts the HF directory (or .pth/.bin file) ``src`` into an Orbax checkpoint at ``dst``; returns its path.

  Tensors are read lazily (memory-mapped safetensors), transformed to our layout and kept as host numpy arrays;
  only the converted params (one copy, in ``dtype``) are ever held in memory. The output appears atomically.
  """
  src = os.fspath(src)
  if not os.path.exists(src):
    raise FileNotFoundError(f"No checkpoint at {src}.")
  source, config = open_hf(src, dtype)
  out_dtype = np.dtype(jnp.dtype(config.param_dtype))
  table = hf.check_keys(source, config)
  params: dict = {}
  for rule, array in progress(hf.iter_params(source, config, out_dtype), len(table), "converting", show_progress):
    hf.set_path(params, rule.path, np.ascontiguousarray(array))
  return save(dst, config, params, overwrite=overwrite)
