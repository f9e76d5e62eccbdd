"""``huginn-jax convert``: an HF/PyTorch checkpoint to an Orbax directory, streamed one tensor at a time."""

from __future__ import annotations

import os

from huginn_jax.checkpoint.io import load_hf, save


def convert(src, dst, *, dtype=None, overwrite: bool = False, show_progress: bool = True) -> str:
  """Converts the HF directory (or .pth/.bin file) ``src`` into an Orbax checkpoint at ``dst``; returns its path.

  ``load_hf`` reads the tensors one at a time, transforms them to our layout and moves them into JAX arrays (which
  Orbax writes without another copy), so the peak memory is one copy of the converted params plus one tensor in
  flight. The output appears atomically.
  """
  src = os.fspath(src)
  if not os.path.exists(src):
    raise FileNotFoundError(f"No checkpoint at {src}.")
  config, params = load_hf(src, dtype, show_progress=show_progress)
  return save(dst, config, params, overwrite=overwrite)
