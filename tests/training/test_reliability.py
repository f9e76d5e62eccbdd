"""Reliability of training runs: one writer per workdir, clean stops on SIGTERM/SIGINT (real processes), no
non-finite checkpoint, leftovers cleaned, metrics not duplicated on resume, resumes that refuse changed settings,
and every command reading what ``train`` writes."""

import json
import os
import signal
import subprocess
import sys
import time

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
from huginn_jax.training.workdir_lock import WorkdirLock, WorkdirLocked
from training_setup import EXPERIMENT, SEQ, cache_dir, counting_corpus

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return cache_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "train.parquet"
  rows = counting_corpus(64, SEQ, seed=2)
  pq.write_table(pa.table({"input_ids": pa.array(rows.tolist(), pa.list_(pa.int32()))}), path)
  return str(path)


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return env


def _overrides(workdir, data, cache, **fields):
  """A run of the tiny experiment with one layer per block (none of these properties needs more, and it halves
  every compilation); the steps' count does not change the compiled step (constant learning rate), so the runs of
  this module share it through the compilation cache."""
  values = {"model.n_layers_prelude": 1, "model.n_layers_core": 1, "model.n_layers_coda": 1,
            "train.workdir": repr(str(workdir)), "train.data.train_files": f"({str(data)!r},)", "train.steps": 10000,
            "train.seq_len": SEQ, "train.batch_size": 4, "train.checkpoint.every": 100000, "train.log.every": 1,
            "train.log.progress": False, "train.log.tensorboard": False, "train.compilation_cache_dir": repr(cache),
            "train.mesh.data": 1, "train.optimizer.warmup_steps": 0, "train.optimizer.cooldown_steps": 0}
  values.update(fields)
  return [f"{k}={v}" for k, v in values.items()]


def _metric_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line)["step"] for line in f if line.endswith("\n")]


def _wait_for_rows(proc, workdir, rows, timeout=300):
  deadline = time.monotonic() + timeout
  while len(_metric_steps(workdir)) < rows:
    assert proc.poll() is None, proc.communicate()
    assert time.monotonic() < deadline, "the training subprocess logged too few steps in time"
    time.sleep(0.5)


def test_lock_refuses_a_second_writer_and_a_killed_holder_leaves_it_free(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from huginn_jax.training.workdir_lock import WorkdirLock; "
       f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
      env=_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirLocked, match=f"in use by another training run \\(pid {holder.pid} on "):
      WorkdirLock(str(tmp_path)).acquire()
  finally:
    holder.kill()  # SIGKILL: no cleanup runs in the holder
    holder.wait()
  with WorkdirLock(str(tmp_path)) as lock:  # the kernel dropped the dead holder's lock
    with open(lock.path) as f:
      assert json.load(f)["pid"] == os.getpid()
    with pytest.raises(WorkdirLocked, match=f"pid {os.getpid()}"):  # also within one process
      WorkdirLock(str(tmp_path)).acquire()


def test_the_refusal_names_a_holder_that_writes_its_pid_just_after_locking(tmp_path):
  """A holder writes its record just after taking the lock; a refusal in between waits for it instead of saying
  "pid unknown", and a holder that releases meanwhile lets the waiting run take the lock."""
  import fcntl
  import threading
  from huginn_jax.training.workdir_lock import lock_path

  def hold():  # holds the lock with an empty record, as a holder does just after locking or just before releasing
    fd = os.open(lock_path(str(tmp_path)), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    return fd

  def soon(action, fd):
    timer = threading.Timer(0.05, action, args=(fd,))
    timer.start()
    return timer

  fd = hold()
  late = soon(lambda fd: os.pwrite(fd, b'{"pid": 4242, "host": "h", "started": "t"}\n', 0), fd)
  try:
    with pytest.raises(WorkdirLocked, match=r"\(pid 4242 on h, started t\)"):
      WorkdirLock(str(tmp_path)).acquire()
  finally:
    late.join()
    os.close(fd)
  fd = hold()  # never writes: refused after the wait, saying so
  try:
    with pytest.raises(WorkdirLocked, match="pid unknown: it holds the lock but has written no pid"):
      WorkdirLock(str(tmp_path)).acquire()
  finally:
    os.close(fd)
  fd = hold()
  late = soon(lambda fd: fcntl.flock(fd, fcntl.LOCK_UN), fd)  # released before writing anything
  try:
    with WorkdirLock(str(tmp_path)) as lock:
      with open(lock.path) as f:
        assert json.load(f)["pid"] == os.getpid()
  finally:
    late.join()
    os.close(fd)


def test_sigterm_and_sigint_stop_at_a_step_with_a_checkpoint_and_the_run_continues(tmp_path, corpus_file, cache,
                                                                                   capsys):
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "huginn_jax.cli", "train", "--config", EXPERIMENT, "--set",
             *_overrides(workdir, corpus_file, cache)]
  first = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for_rows(first, workdir, 3)
  first.send_signal(signal.SIGTERM)
  out, err = first.communicate(timeout=60)  # well within stop.sh's 60 s grace period
  assert first.returncode == 128 + signal.SIGTERM, err
  assert "Traceback" not in err
  stopped = int(out.split("SIGTERM: stopped at step ")[1].split()[0])
  assert TrainCheckpointer(workdir / "checkpoints").all_steps() == [stopped]
  assert _metric_steps(workdir) == list(range(1, stopped + 1))

  second = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_rows(second, workdir, stopped + 2)
    # A second run on the same workdir is refused, naming the live one.
    assert cli.main(["train", "--config", EXPERIMENT, "--set", *_overrides(workdir, corpus_file, cache)]) == 2
    assert f"in use by another training run (pid {second.pid} on " in capsys.readouterr().err
  finally:
    second.send_signal(signal.SIGINT)
    out, err = second.communicate(timeout=60)
  assert second.returncode == 128 + signal.SIGINT, err
  assert f"resumed from {workdir / 'checkpoints'} at step {stopped}" in out
  again = int(out.split("SIGINT: stopped at step ")[1].split()[0])
  assert again > stopped
  assert TrainCheckpointer(workdir / "checkpoints").all_steps() == [stopped, again]
  assert _metric_steps(workdir) == list(range(1, again + 1))  # each step logged once


def _quick(workdir, data, cache, **fields):
  experiment = train_config.apply_overrides(train_config.load_experiment(EXPERIMENT),
                                            _overrides(workdir, data, cache, **fields))
  return experiment.model, experiment.train


def test_a_diverged_run_never_saves_a_nonfinite_checkpoint_and_exits_with_one_line(tmp_path, corpus_file, cache):
  # lr 1e20: step 1 is finite but sends the params to ~1e20, every later step overflows.
  fields = {"train.steps": 12, "train.checkpoint.every": 1, "train.checkpoint.keep": 2, "train.log.every": 10,
            "train.optimizer.name": "'adamw'", "train.optimizer.lr": 1e20, "train.optimizer.warmup_steps": 0,
            "train.optimizer.cooldown_steps": 0}
  off = _overrides(tmp_path / "off", corpus_file, cache, **fields, **{"train.optimizer.skip_nonfinite": False})
  # The command in a process of one device: in this one its mesh would have to span all 8 simulated devices, whose
  # compilation and steps cost several times more on a 2-core machine.
  command = subprocess.run([sys.executable, "-m", "huginn_jax.cli", "train", "--config", EXPERIMENT, "--set", *off],
                           env=_env(), capture_output=True, text=True, timeout=600)
  assert command.returncode == 3, command.stderr
  err = command.stderr
  lines = [line for line in err.splitlines() if line.startswith("huginn-jax train")]
  assert len(lines) == 1 and "Traceback" not in err, err
  assert "training diverged: step 2: the loss" in lines[0] and "last checkpoint is step 1" in lines[0]
  assert TrainCheckpointer(tmp_path / "off" / "checkpoints").all_steps() == [1]  # step 1 was not rotated out

  model, train = _quick(tmp_path / "on", corpus_file, cache, **fields)
  train.optimizer.max_consecutive_nonfinite = 3
  with pytest.raises(loop.TrainingDiverged, match="step 4: 3 steps in a row had non-finite"):  # not at log step 10
    _train(train, model)
  checkpointer = TrainCheckpointer(tmp_path / "on" / "checkpoints")
  assert checkpointer.all_steps() == [2, 3]
  _, params = hj.load(tmp_path / "on" / "checkpoints" / "3")
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def _train(train, model, **kwargs):
  return loop.train(train, model, devices=jax.devices()[:1], **kwargs)


def test_leftovers_are_removed_metrics_are_not_duplicated_and_resume_refuses_changes(tmp_path, corpus_file, cache):
  workdir = tmp_path / "run"
  model, train = _quick(workdir, corpus_file, cache, **{"train.steps": 6, "train.checkpoint.every": 2})
  leftovers = [workdir / "checkpoints" / "8.orbax-checkpoint-tmp", workdir / "checkpoints" / "4" / "state"]
  for path in leftovers:  # an interrupted save, and a rotation (deletion) cut short
    path.mkdir(parents=True)

  def crash(step, metrics, batch):
    if step == 4:
      raise KeyboardInterrupt  # killed after logging step 3, with the last checkpoint at step 2

  with pytest.raises(KeyboardInterrupt):
    _train(train, model, callbacks=[crash])
  assert not any(path.exists() for path in leftovers) and not (workdir / "checkpoints" / "4").exists()
  assert _metric_steps(workdir) == [1, 2, 3]
  _train(train, model)
  assert _metric_steps(workdir) == list(range(1, 7))

  for field, value, message in (("seed", 1, "train.seed=0, this run has 1"),
                                ("batch_size", 8, "train.batch_size=4, this run has 8"),
                                ("data.train_files", ("other.parquet",), "train.data.train_files=")):
    _, changed = _quick(workdir, corpus_file, cache, **{"train.steps": 6, f"train.{field}": repr(value)})
    with pytest.raises(ValueError, match=rf"checkpoint step 6 in .* was trained with {message}"):
      _train(changed, model)
  _, changed = _quick(workdir, corpus_file, cache, **{"train.steps": 6, "train.optimizer.lr": 1e-4,
                                                      "train.checkpoint.allow_changes": "('optimizer.lr',)"})
  assert int(_train(changed, model).state.step) == 6  # an accepted change resumes


def test_every_command_reads_a_training_runs_checkpoint(tmp_path, corpus_file, cache):
  workdir = tmp_path / "run"
  # The module's model and optimizer settings: the train step compiled for the runs above is reused.
  model, train = _quick(workdir, corpus_file, cache, **{"train.steps": 2})
  trained = _train(train, model).state.params
  step_dir = str(workdir / "checkpoints" / "2")
  for path in (step_dir, str(workdir), str(workdir / "checkpoints")):
    config, params = hj.load(path)
    assert config.d_model == 64 and config.max_seq_len == model.max_seq_len
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(trained)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  assert cli.main(["export", step_dir, str(tmp_path / "hf")]) == 0
  _, exported = hj.load(tmp_path / "hf")
  np.testing.assert_array_equal(np.asarray(exported["wte"]), np.asarray(trained["wte"]))
  assert cli.main(["forward", str(workdir), "--steps", "1", "--seq-len", "4", "--batch", "1"]) == 0

  model, finetune = _quick(tmp_path / "finetune", corpus_file, cache, **{"train.steps": 1})
  finetune.init_from = step_dir  # train --init-from runs/X/checkpoints/N
  start = _train(finetune, model, stop_after=0).state
  assert int(start.step) == 0
  np.testing.assert_array_equal(np.asarray(start.params["wte"]), np.asarray(trained["wte"]))
