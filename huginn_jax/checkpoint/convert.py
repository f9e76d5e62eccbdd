"""``huginn-jax convert``: an HF/PyTorch checkpoint to an Orbax directory, streamed one tensor at a time."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from huginn_jax.checkpoint import hf
from huginn_jax.checkpoint.io import open_hf, progress, save


def convert(src, dst, *, dtype=None, overwrite: bool = False, show_progress: bool = True) -> str:
  """Converts the HF directory (or .pth/.bin file) ``src`` into an Orbax checkpoint at ``dst``; returns its path.

  Tensors are read one at a time, transformed to our layout and moved into JAX arrays (which Orbax writes without
  another copy), so the peak memory is one copy of the converted params plus one tensor in flight. The output
  appears atomically.
  """
  src = os.fspath(src)
  if not os.path.exists(src):
    raise FileNotFoundError(f"No checkpoint at {src}.")
  source, config = open_hf(src, dtype)
  out_dtype = np.dtype(jnp.dtype(config.param_dtype))
  table = hf.check_keys(source, config)
  params: dict = {}
  for rule, array in progress(hf.iter_params(source, config, out_dtype), len(table), "converting", show_progress):
    hf.set_path(params, rule.path, jax.device_put(array))
  return save(dst, config, params, overwrite=overwrite)
