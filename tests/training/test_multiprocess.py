"""Two processes on 127.0.0.1 from the documented environment variables: the same losses as one process, and a
resume onto another process count (2 -> 1) that continues the same run."""

import json
import os
import socket
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from training_setup import EXPERIMENT, SEQ, cache_dir, counting_corpus

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(workdir, data, steps, cache):
  return [sys.executable, "-m", "huginn_jax.cli", "train", "--config", EXPERIMENT, "--set",
          f"train.workdir={str(workdir)!r}", f"train.data.train_files=({data!r},)", f"train.steps={steps}",
          f"train.seq_len={SEQ}", "train.batch_size=4", "train.checkpoint.every=2", "train.log.every=1",
          "train.log.progress=False", "train.log.tensorboard=False", "train.optimizer.warmup_steps=0",
          "train.optimizer.cooldown_steps=0", f"train.compilation_cache_dir={cache!r}",
          # One layer per block: the processes and their data are the point here, and it halves each compilation.
          "model.n_layers_prelude=1", "model.n_layers_core=1", "model.n_layers_coda=1"]


def _env(devices, **extra):
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {row["step"]: row["loss"] for row in map(json.loads, f)}


def test_two_processes_match_one_and_resume_on_one(tmp_path, tmp_path_factory):
  # One compilation cache for the three launches: the resume (and, as the cache key ignores the process count,
  # perhaps the two processes) reuse the single process's compiled step instead of compiling it again.
  cache = cache_dir(tmp_path_factory)
  data = str(tmp_path / "train.parquet")
  rows = counting_corpus(40, SEQ, seed=3)
  pq.write_table(pa.table({"input_ids": pa.array(rows.tolist(), pa.list_(pa.int32()))}), data)

  single = subprocess.run(_command(tmp_path / "one", data, 6, cache), env=_env(2), capture_output=True, text=True,
                          timeout=600)
  assert single.returncode == 0, single.stderr

  port = _free_port()
  procs = [subprocess.Popen(_command(tmp_path / "two", data, 4, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                                JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
           for i in range(2)]
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
  resumed = subprocess.run(_command(tmp_path / "two", data, 6, cache), env=_env(2), capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr
  assert "at step 4" in resumed.stdout

  one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert sorted(two) == list(range(1, 7))
  for step in range(1, 7):  # the same rows in the same order each step: equal up to float summation order
    assert abs(one[step] - two[step]) <= 1e-5 * one[step], (step, one[step], two[step])
