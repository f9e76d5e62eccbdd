"""The grain pipeline: shifted inputs/labels, global shuffle per epoch, per-host sharding, checkpointable state."""

import numpy as np
import pytest

from huginn_jax.data import pipeline, sources

SEQ = 8


def _rows(n=24):
  # row i starts with i, so a batch tells which rows it holds
  return np.stack([np.arange(i * 100, i * 100 + SEQ + 1) for i in range(n)]).astype(np.int32)


def _ids(batch):
  return [int(x) // 100 for x in batch["inputs"][:, 0]]


def test_batches_hold_shifted_rows():
  it = pipeline.make_iterator(sources.ArraySource(_rows()), seq_len=SEQ, global_batch=4, shuffle=False,
                              process_index=0, process_count=1)
  batch = next(it)
  assert batch["inputs"].shape == (4, SEQ) and batch["inputs"].dtype == np.int32
  np.testing.assert_array_equal(batch["labels"][:, :-1], batch["inputs"][:, 1:])
  np.testing.assert_array_equal(batch["inputs"][0], np.arange(SEQ))
  np.testing.assert_array_equal(batch["labels"][0], np.arange(1, SEQ + 1))


def test_global_shuffle_is_seeded_and_reshuffles_each_epoch():
  src = sources.ArraySource(_rows())
  run = lambda seed: [_ids(next(it)) for it in [pipeline.make_iterator(  # noqa: E731
      src, seq_len=SEQ, global_batch=4, seed=seed, process_index=0, process_count=1)] for _ in range(12)]
  order = sum(run(1), [])
  assert order == sum(run(1), [])
  assert order != sum(run(2), [])
  first, second = order[:24], order[24:]
  assert sorted(first) == list(range(24)) and sorted(second) == list(range(24))  # each epoch sees every row once
  assert first != second and first != list(range(24))


def test_hosts_read_disjoint_rows():
  src = sources.ArraySource(_rows())
  seen = []
  for host in range(2):
    it = pipeline.make_iterator(src, seq_len=SEQ, global_batch=8, seed=3, process_index=host, process_count=2)
    batches = [_ids(next(it)) for _ in range(3)]  # 3 steps x 4 rows per host = one epoch over both hosts
    assert all(len(b) == 4 for b in batches)
    seen.append(sum(batches, []))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(24))
  with pytest.raises(ValueError, match="does not divide over 3 hosts"):
    pipeline.make_dataset(src, seq_len=SEQ, global_batch=8, process_index=0, process_count=3)


def test_iterator_state_restores_the_same_batches():
  src = sources.ArraySource(_rows())
  kwargs = dict(seq_len=SEQ, global_batch=4, seed=5, process_index=0, process_count=1)
  it = pipeline.make_iterator(src, **kwargs)
  for _ in range(7):  # past the first epoch
    next(it)
  state = it.get_state()
  expected = [_ids(next(it)) for _ in range(5)]
  fresh = pipeline.make_iterator(src, **kwargs)
  fresh.set_state(state)
  assert [_ids(next(fresh)) for _ in range(5)] == expected


def test_rows_of_the_wrong_length_fail_at_construction():
  with pytest.raises(ValueError, match=r"expected \(9,\)"):
    pipeline.make_dataset(sources.ArraySource(np.zeros((10, 5), np.int32)), seq_len=SEQ, global_batch=2,
                          process_index=0, process_count=1)


class _PairSource:
  """Rows already split into inputs and labels (targets that are not the next token)."""

  def __len__(self):
    return 10

  def __getitem__(self, i):
    return {"inputs": np.full(SEQ, i, np.int64), "labels": np.where(np.arange(SEQ) % 2, -100, i + 1)}


def test_rows_of_inputs_and_labels_pass_through():
  it = pipeline.make_iterator(_PairSource(), seq_len=SEQ, global_batch=2, shuffle=False, process_index=0,
                              process_count=1)
  batch = next(it)
  assert batch["inputs"].dtype == batch["labels"].dtype == np.int32
  np.testing.assert_array_equal(batch["inputs"][:, 0], [0, 1])
  np.testing.assert_array_equal(batch["labels"][1], np.where(np.arange(SEQ) % 2, -100, 2))
  with pytest.raises(ValueError, match="inputs/labels"):
    pipeline.make_iterator(_PairSource(), seq_len=SEQ + 1, global_batch=2, process_index=0, process_count=1)


def test_global_batches_do_not_depend_on_the_host_count_and_resume_from_a_step():
  src = sources.ArraySource(_rows())
  kwargs = dict(seq_len=SEQ, global_batch=8, seed=7)
  one = pipeline.make_iterator(src, process_index=0, process_count=1, **kwargs)
  global_batches = [_ids(next(one)) for _ in range(7)]  # past the first epoch
  for hosts in (2, 4):
    its = [pipeline.make_iterator(src, process_index=i, process_count=hosts, **kwargs) for i in range(hosts)]
    for expected in global_batches:  # host i holds the i-th contiguous block of the same global batch
      assert sum((_ids(next(it)) for it in its), []) == expected
  for hosts in (1, 2):  # a resume at step 4 needs only the step, whatever the host count before
    its = [pipeline.make_iterator(src, process_index=i, process_count=hosts, start_step=4, **kwargs)
           for i in range(hosts)]
    assert [sum((_ids(next(it)) for it in its), []) for _ in range(3)] == global_batches[4:]
  with pytest.raises(ValueError, match="none left after step 3"):
    pipeline.make_dataset(src, num_epochs=1, start_step=3, process_index=0, process_count=1, **kwargs)
