"""The grain input pipeline: source -> global shuffle -> repeat -> per-host shard -> (inputs, labels) -> batch ->
prefetch. The iterator's state (a small dict) is saved with each checkpoint, so a resumed run reads the same
batches in the same order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class SplitRow(grain.transforms.Map):
  """A row of seq_len + 1 tokens -> inputs = row[:-1], labels = row[1:]. A row that is already a dict of
  ``inputs`` and ``labels`` (seq_len each; label -100 = no loss) passes through, for tasks whose targets are not
  the next token."""
  seq_len: int

  def map(self, row) -> dict[str, np.ndarray]:
    if isinstance(row, dict):
      out = {name: np.asarray(row[name], np.int32) for name in ("inputs", "labels") if name in row}
      if len(out) != 2 or any(v.shape != (self.seq_len,) for v in out.values()):
        raise ValueError(f"a data row of inputs/labels has shapes { {k: np.shape(v) for k, v in row.items()} }, "
                         f"expected 'inputs' and 'labels' of ({self.seq_len},) = seq_len tokens each.")
      return out
    row = np.asarray(row)
    if row.shape != (self.seq_len + 1,):
      raise ValueError(f"a data row has shape {row.shape}, expected ({self.seq_len + 1},) = seq_len + 1 tokens.")
    return {"inputs": row[:-1].astype(np.int32), "labels": row[1:].astype(np.int32)}


@dataclasses.dataclass(frozen=True)
class HostRow(grain.transforms.Map):
  """Index j of a host's stream -> its row of the global stream: step ``start_step + j // b`` takes global rows
  ``[step * B, (step + 1) * B)``, host i the contiguous block ``[i * b, (i + 1) * b)`` of them (b = B / hosts). So
  the global batch of a step is the same rows in the same order for any number of hosts, and a resume at a step
  needs only the step number, not the iterator state of each host."""
  rows: Any  # the globally shuffled, repeated MapDataset
  global_batch: int
  host_batch: int
  process_index: int
  start_step: int

  def map(self, j):
    step, r = divmod(int(j), self.host_batch)
    return self.rows[(self.start_step + step) * self.global_batch + self.process_index * self.host_batch + r]


def host_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"the global batch of {global_batch} sequences does not divide over {process_count} hosts; "
                     "make train.batch_size a multiple of the host count.")
  return global_batch // process_count


def make_dataset(source, *, seq_len: int, global_batch: int, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, process_index: int | None = None, process_count: int | None = None,
                 read_threads: int = 2, prefetch: int = 4, worker_count: int = 0,
                 start_step: int = 0) -> grain.IterDataset:
  """The batched dataset of this host: dicts of ``inputs``/``labels`` int32 [global_batch / hosts, seq_len],
  from optimizer step ``start_step`` on.

  The shuffle is global (over all rows, reshuffled every epoch) and the same on every host; each step's global
  batch is the next ``global_batch`` rows of it and each host reads its contiguous block of them (``HostRow``), so
  hosts read disjoint rows and the batches do not depend on the number of hosts.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batch = host_batch_size(global_batch, process_count)
  if len(source) == 0:
    raise ValueError(f"the data source {source!r} has no rows.")
  if len(source) < global_batch and num_epochs is not None:
    raise ValueError(f"the data source has {len(source)} rows, fewer than one batch of {global_batch}.")
  SplitRow(seq_len).map(source[0])  # fail now, naming the file, if the rows have the wrong length
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  steps = len(ds) // global_batch - start_step
  if steps <= 0:
    raise ValueError(f"the data has {len(ds) // global_batch} batches of {global_batch} rows (data.num_epochs="
                     f"{num_epochs}), none left after step {start_step}; raise data.num_epochs or use None.")
  ds = grain.MapDataset.range(steps * batch).map(HostRow(ds, global_batch, batch, process_index, start_step))
  ds = ds.map(SplitRow(seq_len)).batch(batch, drop_remainder=True)
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
  it = ds.to_iter_dataset(options)
  if worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it


def make_iterator(source, **kwargs) -> grain.DatasetIterator:
  """An iterator over ``make_dataset(source, **kwargs)``; checkpoint it with ``get_state``/``set_state``."""
  return iter(make_dataset(source, **kwargs))


def from_config(train_config, source=None, **kwargs) -> grain.IterDataset:
  """The dataset of a training config (``train.data``); ``source`` replaces the configured files."""
  from huginn_jax.data import sources
  data = train_config.data
  if source is None:
    source = sources.open_source(data.format, list(data.train_files), column=data.column,
                                 row_length=train_config.seq_len + 1)
  elif isinstance(source, (np.ndarray, list)):
    source = sources.ArraySource(source, row_length=train_config.seq_len + 1)
  options: dict[str, Any] = dict(seq_len=train_config.seq_len, global_batch=train_config.batch_size,
                                 seed=data.seed, shuffle=data.shuffle, num_epochs=data.num_epochs,
                                 read_threads=data.read_threads, prefetch=data.prefetch,
                                 worker_count=data.worker_count)
  options.update(kwargs)
  return make_dataset(source, **options)
