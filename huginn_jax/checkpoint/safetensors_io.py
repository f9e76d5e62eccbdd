"""Streaming safetensors reader and writer on plain numpy (bfloat16 via ml_dtypes), no torch, no full copies.

Reading fetches one tensor at a time, so a tensor costs memory only while it is used. Writing streams one tensor at a
time to a temporary file that is renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

from huginn_jax.atomic_file import atomic_file

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in _DTYPES.items()}


class SafetensorsFile:
  """Lazy view of one ``.safetensors`` file: ``keys()``, ``shape(k)``, ``dtype(k)``, ``get(k)`` (read on demand)."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    with open(self.path, "rb") as f:
      raw = f.read(8)
      if len(raw) != 8:
        raise ValueError(f"{self.path} is not a safetensors file (shorter than its 8-byte header length).")
      (n,) = struct.unpack("<Q", raw)
      if n > os.path.getsize(self.path):
        raise ValueError(f"{self.path} is not a safetensors file (header length {n} exceeds the file size).")
      header = json.loads(f.read(n))
    self.metadata = header.pop("__metadata__", None) or {}
    self._entries = header
    self._data_start = 8 + n

  def keys(self) -> list[str]:
    return list(self._entries)

  def __contains__(self, key: str) -> bool:
    return key in self._entries

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._entries[key]["shape"])

  def dtype(self, key: str) -> np.dtype:
    code = self._entries[key]["dtype"]
    if code not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {key!r} has unsupported dtype {code}.")
    return _DTYPES[code]

  def get(self, key: str) -> np.ndarray:
    """Reads one tensor into a fresh array (a positional read, not a memory map, so that memory is returned as
    soon as the caller drops the array and the resident size never grows with the file)."""
    begin, end = self._entries[key]["data_offsets"]
    out = np.empty(self.shape(key), self.dtype(key))
    view = memoryview(out.reshape(-1).view(np.uint8))
    fd = os.open(self.path, os.O_RDONLY)
    try:
      done, size = 0, end - begin
      while done < size:
        n = os.preadv(fd, [view[done:]], self._data_start + begin + done)
        if n <= 0:
          raise ValueError(f"{self.path} is truncated: tensor {key!r} ends past the end of the file.")
        done += n
    finally:
      os.close(fd)
    return out


def write(path: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]] | dict[str, np.ndarray], *,
          metadata: dict[str, str] | None = None, shapes: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
          ) -> None:
  """Writes tensors atomically. ``tensors`` may be a lazy iterable of (name, array) pairs; then ``shapes`` (name ->
  (shape, dtype)) must list them in the same order so the header can be written first and arrays streamed."""
  if isinstance(tensors, dict):
    shapes = {k: (v.shape, v.dtype) for k, v in tensors.items()}
    tensors = tensors.items()
  if shapes is None:
    tensors = list(tensors)
    shapes = {k: (v.shape, v.dtype) for k, v in tensors}
  header, offset = {}, 0
  for name, (shape, dtype) in shapes.items():
    dtype = np.dtype(dtype)
    if dtype not in _CODES:
      raise ValueError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors.")
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {"dtype": _CODES[dtype], "shape": [int(s) for s in shape], "data_offsets": [offset, offset + size]}
    offset += size
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  path = os.fspath(path)
  with atomic_file(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, array in _ordered(tensors, shapes):
      f.write(np.ascontiguousarray(array).tobytes())


def _ordered(tensors, shapes) -> Iterator[tuple[str, np.ndarray]]:
  names = iter(shapes)
  for name, array in tensors:
    expected = next(names, None)
    if name != expected:
      raise ValueError(f"tensor {name!r} arrived out of order (expected {expected!r}).")
    shape, dtype = shapes[name]
    array = np.asarray(array)
    if tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(dtype):
      raise ValueError(f"tensor {name!r} is {array.shape} {array.dtype}, announced as {tuple(shape)} {dtype}.")
    yield name, array
