"""Random-access sources of token rows for grain: parquet files, ArrayRecord files, or an in-memory array.

A row holds ``seq_len + 1`` token ids (the published Huginn dataset: an ``input_ids`` column of 4097-token rows).
Every source checks the row length and names the file and row when it is wrong. Sources hold only paths until
first read, so they pickle cheaply into grain worker processes.
"""

from __future__ import annotations

import bisect
import glob
import os
import threading
from typing import Sequence

import numpy as np

TOKEN_DTYPE = np.int32  # ArrayRecord records are the raw little-endian int32 bytes of one row


def resolve_files(patterns: str | os.PathLike | Sequence[str | os.PathLike], kind: str) -> list[str]:
  """Expands files, directories and glob patterns into a sorted list of files; an error if nothing matches."""
  if isinstance(patterns, (str, os.PathLike)):
    patterns = [patterns]
  if not patterns:
    raise FileNotFoundError(f"No {kind} data files given; set train.data.train_files (files, directories or globs).")
  suffix = {"parquet": ".parquet", "arrayrecord": ".array_record"}.get(kind, "")
  files: list[str] = []
  for pattern in map(os.fspath, patterns):
    if os.path.isdir(pattern):
      found = sorted(glob.glob(os.path.join(pattern, "**", f"*{suffix}"), recursive=True))
    else:
      found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else ([pattern] if os.path.isfile(pattern) else [])
    if not found:
      raise FileNotFoundError(f"No {kind} data files match {pattern!r}; check the path (prepare data with "
                              "`huginn-jax prepare-data`).")
    files.extend(found)
  return files


def _check_row(row: np.ndarray, row_length: int | None, where: str) -> np.ndarray:
  if row_length is not None and row.shape[0] != row_length:
    raise ValueError(f"{where} has {row.shape[0]} tokens, expected {row_length} (seq_len + 1); prepare the data "
                     f"with `huginn-jax prepare-data --seq-len {row_length - 1}` or set train.seq_len to "
                     f"{row.shape[0] - 1}.")
  return row


class ParquetSource:
  """Rows of a list-of-int column (default ``input_ids``) across parquet files, read one row group at a time."""

  def __init__(self, paths, column: str = "input_ids", row_length: int | None = None, cache_row_groups: int = 2):
    import pyarrow.parquet as pq
    self.files = resolve_files(paths, "parquet")
    self.column, self.row_length, self.cache_row_groups = column, row_length, cache_row_groups
    self._starts: list[int] = []  # first global row of each (file, row group)
    self._groups: list[tuple[int, int]] = []
    total = 0
    for f_index, path in enumerate(self.files):
      try:
        meta = pq.ParquetFile(path)
      except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise ValueError(f"{path} is not a readable parquet file: {err}") from err
      if column not in meta.schema_arrow.names:
        raise ValueError(f"{path} has no column {column!r} (columns: {meta.schema_arrow.names}); set "
                         "train.data.column.")
      for g in range(meta.num_row_groups):
        rows = meta.metadata.row_group(g).num_rows
        if rows:
          self._starts.append(total)
          self._groups.append((f_index, g))
          total += rows
    self._len = total
    self._cache: dict[int, np.ndarray] = {}
    self._readers: dict[int, object] = {}
    # grain reads rows from several threads; a pyarrow ParquetFile is not safe to read from two at once (it failed
    # with "ReadRangeCache did not find matching cache entry"), and the cache is shared, so one reader at a time
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self._len

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"], state["_readers"] = {}, {}
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _row_group(self, index: int):
    with self._lock:
      if index not in self._cache:
        import pyarrow.parquet as pq
        f_index, g = self._groups[index]
        if f_index not in self._readers:
          self._readers[f_index] = pq.ParquetFile(self.files[f_index])
        table = self._readers[f_index].read_row_group(g, columns=[self.column])
        if len(self._cache) >= self.cache_row_groups:
          self._cache.pop(next(iter(self._cache)))
        self._cache[index] = table.column(0).combine_chunks()
      return self._cache[index]

  def __getitem__(self, i: int) -> np.ndarray:
    i = int(i)
    if not 0 <= i < self._len:
      raise IndexError(f"row {i} out of range for {self._len} rows")
    index = bisect.bisect_right(self._starts, i) - 1
    column = self._row_group(index)
    j = i - self._starts[index]
    f_index, g = self._groups[index]
    where = f"{self.files[f_index]} row {j} of row group {g}"
    values = column[j].values
    if values is None or values.null_count:
      raise ValueError(f"{where} is null or holds null tokens; drop such rows from the file (or prepare it again "
                       "with `huginn-jax prepare-data`).")
    return _check_row(np.asarray(values, dtype=TOKEN_DTYPE), self.row_length, where)

  def __repr__(self) -> str:
    return f"ParquetSource({len(self.files)} files, {self._len} rows, column={self.column!r})"


class ArrayRecordSource:
  """Rows stored as ArrayRecord records, each the raw little-endian int32 bytes of one row."""

  def __init__(self, paths, row_length: int | None = None):
    import grain
    self.files = resolve_files(paths, "arrayrecord")
    self.row_length = row_length
    try:
      self._source = grain.sources.ArrayRecordDataSource(self.files)
    except Exception as err:  # the reader raises RuntimeError / ValueError for files that are not ArrayRecord
      raise ValueError(f"cannot read ArrayRecord files {self.files}: {err}") from err

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> np.ndarray:
    record = self._source[int(i)]
    if len(record) % np.dtype(TOKEN_DTYPE).itemsize:
      raise ValueError(f"ArrayRecord row {i} of {self.files} has {len(record)} bytes, not a whole number of int32 "
                       "tokens; was it written by `huginn-jax prepare-data --format arrayrecord`?")
    return _check_row(np.frombuffer(record, dtype="<i4").astype(TOKEN_DTYPE), self.row_length,
                      f"ArrayRecord row {i} of {self.files}")

  def __repr__(self) -> str:
    return f"ArrayRecordSource({len(self.files)} files, {len(self)} rows)"


class ArraySource:
  """Rows of an in-memory [num_rows, seq_len + 1] integer array (generated corpora, tests)."""

  def __init__(self, rows, row_length: int | None = None):
    rows = np.asarray(rows)
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.integer):
      raise ValueError(f"rows must be a [num_rows, seq_len + 1] integer array, got shape {rows.shape} {rows.dtype}.")
    if row_length is not None:
      _check_row(rows[0] if len(rows) else np.zeros(row_length), row_length, "every row of the array")
    self.rows = rows.astype(TOKEN_DTYPE)

  def __len__(self) -> int:
    return self.rows.shape[0]

  def __getitem__(self, i: int) -> np.ndarray:
    return self.rows[int(i)]

  def __repr__(self) -> str:
    return f"ArraySource({self.rows.shape[0]} rows of {self.rows.shape[1]})"


def open_source(fmt: str, paths, *, column: str = "input_ids", row_length: int | None = None):
  """The source for a data format name ("parquet" or "arrayrecord")."""
  if fmt == "parquet":
    return ParquetSource(paths, column=column, row_length=row_length)
  if fmt == "arrayrecord":
    return ArrayRecordSource(paths, row_length=row_length)
  raise ValueError(f"Unknown data format {fmt!r}; choose 'parquet' or 'arrayrecord'.")
