"""A parquet row that is null, or holds null tokens, is an error naming the file and the row."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from huginn_jax.data import sources


def test_null_rows_are_named(tmp_path):
  path = tmp_path / "nulls.parquet"
  rows = [[1, 2, 3], None, [4, None, 6]]
  pq.write_table(pa.table({"input_ids": pa.array(rows, pa.list_(pa.int32()))}), path)
  src = sources.ParquetSource(str(path), row_length=3)
  assert src[0].tolist() == [1, 2, 3]
  for i in (1, 2):
    with pytest.raises(ValueError, match=f"nulls.parquet row {i} of row group 0 is null or holds null tokens"):
      src[i]
