"""Token-row sources: parquet (the published dataset's layout), ArrayRecord, in-memory arrays, and their errors."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from huginn_jax.data import sources


def write_parquet(path, rows, column="input_ids", row_group_size=4):
  table = pa.table({column: pa.array([list(map(int, r)) for r in rows], pa.list_(pa.int32()))})
  pq.write_table(table, path, row_group_size=row_group_size)
  return str(path)


def write_arrayrecord(path, rows):
  from array_record.python.array_record_module import ArrayRecordWriter
  writer = ArrayRecordWriter(str(path), "group_size:1")
  for r in rows:
    writer.write(np.asarray(r, "<i4").tobytes())
  writer.close()
  return str(path)


def test_parquet_rows_across_files_and_row_groups(tmp_path):
  rows = np.arange(13 * 9).reshape(13, 9)
  write_parquet(tmp_path / "a.parquet", rows[:7], row_group_size=3)
  write_parquet(tmp_path / "b.parquet", rows[7:], row_group_size=4)
  src = sources.ParquetSource(str(tmp_path / "*.parquet"), row_length=9)
  assert len(src) == 13
  for i in (0, 2, 3, 6, 7, 12, 5, 0):  # out of order: crosses files and row groups
    np.testing.assert_array_equal(src[i], rows[i])
    assert src[i].dtype == np.int32
  with pytest.raises(IndexError):
    src[13]
  same = sources.ParquetSource(str(tmp_path), row_length=9)  # a directory works too
  assert len(same) == 13


def test_parquet_rows_read_from_many_threads_at_once(tmp_path):
  """grain reads a source from several threads; one shared pyarrow reader used to fail under that ("ReadRangeCache
  did not find matching cache entry") or could hand back another row group's rows."""
  from concurrent.futures import ThreadPoolExecutor
  rows = np.arange(256 * 17).reshape(256, 17)
  src = sources.ParquetSource(write_parquet(tmp_path / "a.parquet", rows, row_group_size=4), row_length=17)
  orders = [np.random.default_rng(t).permutation(len(rows)) for t in range(8)]

  def read(order):
    return [(i, src[i]) for i in order]

  with ThreadPoolExecutor(8) as pool:
    for got in pool.map(read, orders):
      for i, row in got:
        np.testing.assert_array_equal(row, rows[i])


def test_parquet_source_pickles_without_open_files(tmp_path):
  import pickle
  src = sources.ParquetSource(write_parquet(tmp_path / "a.parquet", np.ones((4, 5))), row_length=5)
  src[0]
  clone = pickle.loads(pickle.dumps(src))
  np.testing.assert_array_equal(clone[3], np.ones(5))


def test_arrayrecord_rows(tmp_path):
  rows = np.random.default_rng(0).integers(0, 65536, (6, 17))
  src = sources.ArrayRecordSource(write_arrayrecord(tmp_path / "x.array_record", rows), row_length=17)
  assert len(src) == 6
  np.testing.assert_array_equal(src[4], rows[4])


def test_missing_files_are_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="No parquet data files match .*nothing"):
    sources.ParquetSource(str(tmp_path / "nothing*.parquet"))
  with pytest.raises(FileNotFoundError, match="No parquet data files given"):
    sources.ParquetSource([])
  with pytest.raises(FileNotFoundError, match="No arrayrecord data files match"):
    sources.open_source("arrayrecord", str(tmp_path / "missing.array_record"))


def test_rows_of_the_wrong_length_name_the_file_and_row(tmp_path):
  path = write_parquet(tmp_path / "short.parquet", np.zeros((3, 100)))
  src = sources.ParquetSource(path, row_length=4097)
  with pytest.raises(ValueError, match=r"short.parquet row 1 of row group 0 has 100 tokens, expected 4097"):
    src[1]
  rec = sources.ArrayRecordSource(write_arrayrecord(tmp_path / "r.array_record", np.zeros((2, 8))), row_length=9)
  with pytest.raises(ValueError, match="has 8 tokens, expected 9"):
    rec[0]


def test_wrong_column_and_not_parquet(tmp_path):
  path = write_parquet(tmp_path / "a.parquet", np.zeros((2, 5)), column="tokens")
  with pytest.raises(ValueError, match="no column 'input_ids'.*tokens"):
    sources.ParquetSource(path)
  junk = tmp_path / "junk.parquet"
  junk.write_text("not parquet")
  with pytest.raises(ValueError, match="not a readable parquet file"):
    sources.ParquetSource(str(junk))


def test_array_source_checks_shape():
  with pytest.raises(ValueError, match=r"\[num_rows, seq_len \+ 1\]"):
    sources.ArraySource(np.zeros(5, np.int32))
  with pytest.raises(ValueError, match="expected 9"):
    sources.ArraySource(np.zeros((3, 5), np.int32), row_length=9)
