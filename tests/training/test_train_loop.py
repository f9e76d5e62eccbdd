"""The training loop end to end: it learns, it resumes bit for bit (data order included) after a crash, it resumes
onto another mesh, the CLI drives it, and bad input gets clear errors."""

import json
import os
import shutil

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import huginn_jax as hj
from huginn_jax import cli
from huginn_jax.checkpoint.manager import TrainCheckpointer
from huginn_jax.training import config as train_config
from huginn_jax.training import loop
from huginn_jax.training import optimizer as opt_lib
from huginn_jax.training import state as state_lib
from training_setup import (EXPERIMENT, SAVE_EVERY, SEQ, STEPS, cache_dir, counting_corpus, short_run,
                            short_run_overrides)



@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return cache_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "train.parquet"
  rows = counting_corpus(48, SEQ, seed=1)
  pq.write_table(pa.table({"input_ids": pa.array(rows.tolist(), pa.list_(pa.int32()))}), path, row_group_size=16)
  return str(path)


def test_tiny_model_learns_a_generated_corpus(tmp_path, cache, tiny_model):
  model = hj.get_config("tiny")
  train = train_config.get_train_config("tiny_cpu", steps=200, seq_len=32, batch_size=8)
  train.log.progress = False
  train.log.every = 25
  train.checkpoint.every = 1000
  train.compilation_cache_dir = cache
  first = []
  result = loop.train(train, model, source=counting_corpus(512, 32), workdir=str(tmp_path), params=tiny_model[1],
                      devices=jax.devices()[:1], log=lambda s: None,
                      callbacks=[lambda step, metrics, batch: first.append(metrics["loss"]) if step == 1 else None])
  losses = [h["loss"] for h in result.history]
  assert int(result.state.step) == 200
  assert first[0] > 5.0  # the (random) tiny model knows nothing of the corpus: about ln(256) = 5.5 or worse
  assert np.mean(losses[-2:]) < 1.0, losses  # the stride and start are learnt from two tokens
  assert all(h["skipped_total"] == 0 for h in result.history)
  assert all(1 <= h["k"] <= 2 and h["n"] >= 0 for h in result.history)
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  assert [r["step"] for r in logged] == list(range(25, 201, 25))
  assert {"loss", "grad_norm", "lr", "n", "k", "tokens_per_s"} <= set(logged[0])
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(tmp_path, "tensorboard")))
  assert os.listdir(os.path.join(tmp_path, "checkpoints")) == ["200"]  # the final state is always saved


class Crash(Exception):
  pass


def test_kill_and_resume_is_bit_exact_and_resumes_onto_another_mesh(tmp_path, corpus_files, cache, tiny_dir, capsys):
  # Run A: STEPS steps straight, through the command line, fine-tuning the golden tiny checkpoint.
  run_a = tmp_path / "a"
  overrides = short_run_overrides(run_a, corpus_files, cache, tiny_dir)
  assert cli.main(["train", "--config", EXPERIMENT, "--set", *overrides]) == 0
  assert f"trained {STEPS} steps" in capsys.readouterr().out
  with open(run_a / "metrics.jsonl") as f:
    losses_a = {r["step"]: r["loss"] for r in map(json.loads, f)}

  # Run B: the same run crashes three steps after its first checkpoint; the last checkpoint is SAVE_EVERY.
  crash_at = SAVE_EVERY + 3
  run_b = tmp_path / "b"
  model, train = short_run(run_b, corpus_files, cache, tiny_dir)
  seen = {}

  def record(step, metrics, batch, crash_at=None):
    seen.setdefault(step, []).append(np.asarray(batch["inputs"]).copy())
    if step == crash_at:
      raise Crash()

  with pytest.raises(Crash):
    loop.train(train, model, callbacks=[lambda *a: record(*a, crash_at=crash_at)])
  assert TrainCheckpointer(run_b / "checkpoints").all_steps() == [SAVE_EVERY]
  shutil.copytree(run_b, tmp_path / "c")  # for the resume onto another mesh below

  result_b = loop.train(train, model, callbacks=[record])
  assert [h["step"] for h in result_b.history] == list(range(SAVE_EVERY + 1, STEPS + 1))
  for step in range(SAVE_EVERY + 1, crash_at + 1):  # the batches after the checkpoint are read again, in order
    np.testing.assert_array_equal(seen[step][0], seen[step][1])
  for h in result_b.history:
    assert h["loss"] == losses_a[h["step"]]  # bit for bit

  tx, _ = opt_lib.make_optimizer(train, STEPS)
  abstract = state_lib.abstract_state(model, tx)
  final_a, _ = TrainCheckpointer(run_a / "checkpoints").restore(abstract, step=STEPS)
  for a, b in zip(jax.tree.leaves(final_a), jax.tree.leaves(result_b.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # Run C: resume the step-SAVE_EVERY checkpoint on a mesh of another shape.
  train.workdir = str(tmp_path / "c")
  train.mesh.update(dict(data=4, fsdp=1, tensor=2))
  batches_c = {}
  result_c = loop.train(train, model,
                        callbacks=[lambda step, m, batch: batches_c.setdefault(step, np.asarray(batch["inputs"]))])
  assert dict(result_c.mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
  assert result_c.state.params["wte"].sharding.mesh.shape["data"] == 4
  for step in range(SAVE_EVERY + 1, STEPS + 1):
    np.testing.assert_array_equal(batches_c[step], seen[step][-1])
  for h in result_c.history:
    assert abs(h["loss"] - losses_a[h["step"]]) < 1e-4 * losses_a[h["step"]]
  for a, b in zip(jax.tree.leaves(result_c.state.params), jax.tree.leaves(result_b.state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-3)

  # A checkpoint of another model shape is refused, naming the difference.
  other = hj.get_config("tiny", d_model=128, head_dim=32)
  with pytest.raises(ValueError, match=r"another model shape \(d_model=64 there, 128 here"):
    loop.train(train, other)


def _quick(tmp_path, **overrides):
  experiment = train_config.load_experiment(EXPERIMENT)
  experiment.train.workdir = str(tmp_path / "run")
  experiment.train.log.progress = False
  experiment.train.seq_len = SEQ
  for key, value in overrides.items():
    experiment.train[key] = value
  return experiment


def test_missing_data_files_are_a_clear_error(tmp_path):
  experiment = _quick(tmp_path)
  experiment.train.data.train_files = (str(tmp_path / "nowhere" / "*.parquet"),)
  with pytest.raises(FileNotFoundError, match="No parquet data files match .*nowhere"):
    loop.train(experiment.train, experiment.model)


def test_rows_of_the_wrong_length_are_a_clear_error(tmp_path, corpus_files):
  experiment = _quick(tmp_path, seq_len=32)
  experiment.train.data.train_files = (corpus_files,)
  with pytest.raises(ValueError, match=r"train.parquet row 0 of row group 0 has 17 tokens, expected 33"):
    loop.train(experiment.train, experiment.model)


def test_mesh_that_does_not_fit_the_devices_is_a_clear_error(tmp_path, capsys):
  experiment = _quick(tmp_path)
  experiment.train.mesh.update(dict(data=3, fsdp=1, tensor=1))
  with pytest.raises(ValueError, match="needs 3 devices but 8 are available"):
    loop.train(experiment.train, experiment.model, source=counting_corpus(16, SEQ))
  code = cli.main(["train", "--config", EXPERIMENT, "--set", "train.mesh.tensor=3", "train.mesh.data=1"])
  assert code == 2 and "needs 3 devices but 8 are available" in capsys.readouterr().err


def test_finetuning_from_a_checkpoint_of_another_shape_is_a_clear_error(tmp_path, tiny_dir):
  experiment = _quick(tmp_path)
  experiment.model = hj.get_config("tiny", d_model=32, head_dim=8)
  experiment.train.init_from = tiny_dir
  with pytest.raises(ValueError, match=r"another model shape than the model config: d_model=64 there vs 32 here"):
    loop.train(experiment.train, experiment.model, source=counting_corpus(16, SEQ))


def test_tokens_outside_the_vocabulary_are_a_clear_error(tmp_path):
  experiment = _quick(tmp_path)
  rows = counting_corpus(16, SEQ, vocab=300)  # ids up to 299 for a model of 256
  with pytest.raises(ValueError, match=r"outside the model's vocabulary \[0, 256\)"):
    loop.train(experiment.train, experiment.model, source=rows)
