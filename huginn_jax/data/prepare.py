"""``huginn-jax prepare-data``: tokenizes text or jsonl with an HF ``tokenizer.json`` into packed token rows.

Documents are wrapped as ``[bos] tokens [eos]`` and concatenated into one stream, which is cut into rows of
``seq_len + 1`` tokens (the layout of the published Huginn dataset: an ``input_ids`` column of 4097-token rows);
the incomplete last row is dropped. Output: parquet files (``input_ids``, list<int32>) or ArrayRecord files (raw
int32 bytes per row), plus ``metadata.json``, written atomically.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator, Sequence

import numpy as np

from huginn_jax.checkpoint.io import atomic_dir
from huginn_jax.data.sources import TOKEN_DTYPE, resolve_files
from huginn_jax.progress import progress

BOS_TOKEN, EOS_TOKEN = "<|begin_text|>", "<|end_text|>"  # Huginn's document delimiters (ids 65504, 65505)
TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def iter_documents(files: Sequence[str], text_field: str = "text") -> Iterator[str]:
  """Documents of the inputs: a whole .txt file is one document; a .jsonl line is one (its ``text_field``)."""
  for path in files:
    if path.endswith(JSONL_SUFFIXES):
      with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
          if not line.strip():
            continue
          try:
            record = json.loads(line)
          except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{line_no} is not valid JSON: {err}") from err
          if not isinstance(record, dict) or text_field not in record:
            raise ValueError(f"{path}:{line_no} has no field {text_field!r}; pass --text-field.")
          yield str(record[text_field])
    elif path.endswith(TEXT_SUFFIXES):
      with open(path, encoding="utf-8") as f:
        yield f.read()
    else:
      raise ValueError(f"{path}: unknown input type; use .txt (one document per file) or .jsonl (one per line).")


def _special_id(tokenizer, given: int | None, token: str) -> int | None:
  return given if given is not None else tokenizer.token_to_id(token)


def pack_rows(token_lists: Iterable[Sequence[int]], row_length: int, bos_id: int | None, eos_id: int | None,
              stats: dict | None = None) -> Iterator[np.ndarray]:
  """Concatenates ``[bos] doc [eos]`` token lists and yields full rows of ``row_length`` tokens; the tokens of
  the incomplete last row are dropped and counted in ``stats["dropped_tokens"]``."""
  buffer = np.empty(0, TOKEN_DTYPE)
  for ids in token_lists:
    parts = ([[bos_id]] if bos_id is not None else []) + [ids] + ([[eos_id]] if eos_id is not None else [])
    buffer = np.concatenate([buffer] + [np.asarray(p, TOKEN_DTYPE) for p in parts])
    while buffer.shape[0] >= row_length:
      yield buffer[:row_length]
      buffer = buffer[row_length:]
  if stats is not None:
    stats["dropped_tokens"] = int(buffer.shape[0])


class _ParquetWriter:
  def __init__(self, directory: str, rows_per_file: int):
    import pyarrow as pa
    self.directory, self.rows_per_file, self.pa = directory, rows_per_file, pa
    self.rows: list[np.ndarray] = []
    self.files: list[str] = []

  def add(self, row: np.ndarray):
    self.rows.append(row)
    if len(self.rows) == self.rows_per_file:
      self.flush()

  def flush(self):
    if not self.rows:
      return
    import pyarrow.parquet as pq
    pa = self.pa
    flat = np.concatenate(self.rows)
    offsets = np.arange(0, flat.shape[0] + 1, self.rows[0].shape[0], dtype=np.int32)
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))
    name = os.path.join(self.directory, f"train-{len(self.files):05d}.parquet")
    pq.write_table(pa.table({"input_ids": column}), name, row_group_size=min(1024, len(self.rows)))
    self.files.append(name)
    self.rows = []

  def close(self):
    self.flush()


class _ArrayRecordWriter:
  def __init__(self, directory: str, rows_per_file: int):
    from array_record.python.array_record_module import ArrayRecordWriter
    self.directory, self.rows_per_file, self.cls = directory, rows_per_file, ArrayRecordWriter
    self.writer, self.count, self.files = None, 0, []

  def add(self, row: np.ndarray):
    if self.writer is None:
      name = os.path.join(self.directory, f"train-{len(self.files):05d}.array_record")
      self.writer = self.cls(name, "group_size:1")
      self.files.append(name)
    self.writer.write(row.astype("<i4").tobytes())
    self.count += 1
    if self.count == self.rows_per_file:
      self.close()

  def close(self):
    if self.writer is not None:
      self.writer.close()
    self.writer, self.count = None, 0


def prepare_data(inputs: Sequence[str], tokenizer_path: str, out_dir: str, *, seq_len: int = 4096,
                 fmt: str = "parquet", text_field: str = "text", bos_id: int | None = None,
                 eos_id: int | None = None, rows_per_file: int = 8192, batch_docs: int = 256,
                 overwrite: bool = False, show_progress: bool = True) -> dict:
  """Tokenizes and packs ``inputs`` (files, directories or globs of .txt / .jsonl) into ``out_dir``.

  ``bos_id`` / ``eos_id`` default to the tokenizer's ``<|begin_text|>`` / ``<|end_text|>``. Returns the summary
  also written to ``out_dir/metadata.json``.
  """
  from tokenizers import Tokenizer
  if seq_len <= 0:
    raise ValueError(f"seq_len must be positive, got {seq_len}.")
  if fmt not in ("parquet", "arrayrecord"):
    raise ValueError(f"Unknown output format {fmt!r}; choose 'parquet' or 'arrayrecord'.")
  if not os.path.isfile(tokenizer_path):
    raise FileNotFoundError(f"No tokenizer at {tokenizer_path}; pass the path of an HF tokenizer.json.")
  tokenizer = Tokenizer.from_file(os.fspath(tokenizer_path))
  bos, eos = _special_id(tokenizer, bos_id, BOS_TOKEN), _special_id(tokenizer, eos_id, EOS_TOKEN)
  if eos is None:
    raise ValueError(f"the tokenizer has no {EOS_TOKEN} token to separate documents; pass --eos-id.")
  files = [f for pattern in inputs for f in _expand_inputs(pattern)]
  stats = {"documents": 0, "tokens": 0, "dropped_tokens": 0}

  def encoded() -> Iterator[Sequence[int]]:
    docs = iter_documents(files, text_field)
    bar = progress(desc="tokenizing", unit="doc", enabled=show_progress)
    while True:
      chunk = [d for _, d in zip(range(batch_docs), docs)]
      if not chunk:
        break
      for enc in tokenizer.encode_batch(chunk, add_special_tokens=False):
        stats["documents"] += 1
        stats["tokens"] += len(enc.ids)
        yield enc.ids
      bar.update(len(chunk))
    bar.close()

  with atomic_dir(out_dir, overwrite) as tmp:
    writer = (_ParquetWriter if fmt == "parquet" else _ArrayRecordWriter)(tmp, rows_per_file)
    rows = 0
    for row in pack_rows(encoded(), seq_len + 1, bos, eos, stats):
      writer.add(row)
      rows += 1
    writer.close()
    if rows == 0:
      raise ValueError(f"the inputs hold {stats['tokens']} tokens, not enough for one row of {seq_len + 1}; add "
                       "text or lower --seq-len.")
    summary = {"format": fmt, "column": "input_ids", "seq_len": seq_len, "row_length": seq_len + 1, "rows": rows,
               "files": [os.path.basename(f) for f in writer.files], "documents": stats["documents"],
               "document_tokens": stats["tokens"], "dropped_tokens": stats["dropped_tokens"], "bos_id": bos,
               "eos_id": eos, "tokenizer": os.path.abspath(tokenizer_path), "vocab_size": tokenizer.get_vocab_size()}
    with open(os.path.join(tmp, "metadata.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


def _expand_inputs(pattern: str) -> list[str]:
  if os.path.isdir(pattern):
    found = sorted(os.path.join(root, name) for root, _, names in os.walk(pattern) for name in names
                   if name.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES))
    if not found:
      raise FileNotFoundError(f"No .txt or .jsonl files under {pattern}.")
    return found
  return resolve_files(pattern, "text or jsonl")

