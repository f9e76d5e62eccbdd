"""The training loop: ``train(train_config, model_config)`` from Python, ``huginn-jax train`` from the shell.

One run: build the mesh and shardings, create the train state (random, or from a checkpoint to fine-tune) or
resume it with the data iterator from the latest checkpoint, then step, log and checkpoint until
``train_config.steps``. Returns the final state and the logged metrics.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from huginn_jax import api
from huginn_jax import config as model_config_lib
from huginn_jax import sharding as sharding_lib
from huginn_jax.checkpoint.manager import TrainCheckpointer
from huginn_jax.data import pipeline
from huginn_jax.training import config as train_config_lib
from huginn_jax.training import metrics as metrics_lib
from huginn_jax.training import optimizer as optimizer_lib
from huginn_jax.training import state as state_lib
from huginn_jax.training import step as step_lib

StepCallback = Callable[[int, dict, dict], None]  # (step just finished, metrics on host, host batch)


class TrainingDiverged(RuntimeError):
  """Too many consecutive steps had non-finite gradients."""


@dataclasses.dataclass
class TrainResult:
  state: state_lib.TrainState
  history: list[dict]  # the logged metrics, one dict per logged step
  final_metrics: dict
  workdir: str
  mesh: Any


def _checkpoint_config(path: str):
  """The model config stored with a checkpoint (HF or ours), without loading the weights."""
  from huginn_jax.checkpoint import hf, io
  if not os.path.exists(path):
    raise FileNotFoundError(f"train.init_from: no checkpoint at {path}.")
  if io.is_orbax_dir(path):
    return io._config_from_json(os.path.join(path, io.CONFIG_FILE))
  return hf.config_from_checkpoint(path)


def load_finetune_params(path: str, model_config, shardings):
  """Params of a converted (or HF) checkpoint, placed straight into ``shardings`` in the model's param dtype."""
  from huginn_jax.checkpoint.io import load
  saved = _checkpoint_config(path)
  diff = {k: (v, model_config[k]) for k, v in model_config_lib.shape_fields(saved).items() if model_config[k] != v}
  if diff:
    raise ValueError(f"train.init_from {path} has another model shape than the model config: "
                     + ", ".join(f"{k}={a} there vs {b} here" for k, (a, b) in diff.items())
                     + "; take the model config from the checkpoint (e.g. hj.get_config('huginn-0125')).")
  _, params = load(path, dtype=model_config.param_dtype, shardings=shardings)
  return params


def enable_compilation_cache(path: str) -> None:
  """Turns on JAX's persistent compilation cache in ``path`` (also when compilations already ran uncached)."""
  from jax.experimental.compilation_cache import compilation_cache
  path = os.path.abspath(path)
  if jax.config.jax_compilation_cache_dir != path:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()


def _check_token_range(batch: dict, vocab_size: int) -> None:
  inputs, labels = np.asarray(batch["inputs"]), np.asarray(batch["labels"])
  bad_labels = (labels != api.IGNORE_INDEX) & ((labels < 0) | (labels >= vocab_size))
  if inputs.min() < 0 or inputs.max() >= vocab_size or bad_labels.any():
    bad = int(inputs.max() if inputs.max() >= vocab_size else (inputs.min() if inputs.min() < 0 else
                                                               labels[bad_labels][0]))
    raise ValueError(f"token id {bad} in the training data is outside the model's vocabulary [0, {vocab_size}); "
                     "the data was tokenized for another vocabulary (check the tokenizer and model.vocab_size).")


def _make_global_batch(batch: dict, accum: int, sharding) -> dict:
  """Host batch [local_batch, seq] -> global arrays [accum, micro, seq] laid out by ``sharding``."""
  out = {}
  for name in ("inputs", "labels"):
    local = np.asarray(batch[name])
    local = local.reshape(accum, local.shape[0] // accum, local.shape[1])
    out[name] = jax.make_array_from_process_local_data(sharding, local)
  return out


def _print_memory(compiled, log) -> None:
  try:
    stats = compiled.memory_analysis()
  except Exception:  # not every backend reports it
    stats = None
  if stats is None:
    return
  gib = 1 << 30
  total = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
           - stats.alias_size_in_bytes)
  log(f"compiled train step memory per device: {total / gib:.2f} GiB (arguments "
      f"{stats.argument_size_in_bytes / gib:.2f}, temporaries {stats.temp_size_in_bytes / gib:.2f})")


def train(train_config: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict, *, source=None,
          params=None, workdir: str | None = None, stop_after: int | None = None,
          callbacks: Sequence[StepCallback] = (), devices: Sequence[jax.Device] | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
  """Trains ``model_config`` with ``train_config``; returns the final state and logged metrics.

  ``source``: token rows to train on instead of ``train.data.train_files`` (a [rows, seq_len + 1] integer array
  or any random-access source). ``params``: initial params (fine-tuning from Python); else ``train.init_from``,
  else random. A run resumes from the latest checkpoint in ``workdir/checkpoints`` when ``train.checkpoint.resume``.
  ``stop_after`` ends this call after that many steps, saving a checkpoint there, so the next call continues the
  same run exactly (train in chunks, evaluate in between).
  """
  train_config = train_config_lib.validate(train_config, model_config_lib.validate(model_config))
  sharding_lib.maybe_initialize_distributed(train_config.get("distributed", "auto"))
  workdir = os.path.abspath(workdir or train_config.workdir)
  is_main = jax.process_index() == 0
  log = log or (lambda s: print(s, flush=True) if is_main else None)
  if train_config.get("compilation_cache_dir"):
    enable_compilation_cache(train_config.compilation_cache_dir)

  mesh = sharding_lib.make_mesh(dict(train_config.mesh), devices)
  rules = sharding_lib.rules_table(train_config.sharding_rules)
  param_shardings = sharding_lib.param_shardings(model_config, mesh, rules)
  tx, schedule = optimizer_lib.make_optimizer(train_config, train_config.steps)
  state_shardings = state_lib.state_shardings(model_config, tx, mesh, param_shardings)
  accum, seq = train_config.grad_accum_steps, train_config.seq_len
  batch_shape = (accum, train_config.batch_size // accum, seq)
  batch_sharding = step_lib.batch_sharding(mesh, rules, batch_shape)

  dataset = pipeline.from_config(train_config, source)
  data_iter = iter(dataset)
  checkpointer = TrainCheckpointer(os.path.join(workdir, "checkpoints"), keep=train_config.checkpoint.keep,
                                   async_save=train_config.checkpoint.async_save)
  meta = {"model_config": model_config.to_dict(), "train_config": json.loads(train_config.to_json_best_effort())}
  writer = metrics_lib.MetricsWriter(workdir, jsonl=train_config.log.jsonl, tensorboard=train_config.log.tensorboard,
                                     enabled=is_main)
  history: list[dict] = []
  bar = None
  try:
    latest = checkpointer.latest_step() if train_config.checkpoint.resume else None
    if latest is not None:
      abstract = state_lib.with_shardings(state_lib.abstract_state(model_config, tx), state_shardings)
      state, _ = checkpointer.restore(abstract, data_iter, step=latest, model_config=model_config.to_dict())
      log(f"resumed from {checkpointer.directory} at step {latest}")
    else:
      if params is None and train_config.init_from:
        params = load_finetune_params(train_config.init_from, model_config, param_shardings)
        log(f"fine-tuning from {train_config.init_from}")
      if params is not None:
        params = jax.device_put(params, param_shardings)
      state = state_lib.init_state(model_config, tx, state_shardings, key=jax.random.key(train_config.seed),
                                   params=params)
    start = int(state.step)
    step_fn = step_lib.make_train_step(model_config, train_config, tx, schedule, mesh=mesh, rules=rules)
    jitted = step_lib.jit_train_step(step_fn, state_shardings, {"inputs": batch_sharding, "labels": batch_sharding})
    end = train_config.steps if stop_after is None else min(train_config.steps, start + stop_after)
    if start >= end:
      log(f"nothing to do: the state is at step {start} of {train_config.steps}")
      return TrainResult(state, history, {}, workdir, mesh)

    r, k0 = train_config_lib.depth(train_config, model_config)
    log(f"model {model_config.name}: {model_config_lib.num_params(model_config):,} params; mesh "
        f"{dict(mesh.shape)}; batch {train_config.batch_size} x {seq} tokens ({accum} micro-batches); "
        f"recurrence r={r}, k0={k0}; steps {start}->{end}")
    first_batch = next(data_iter)  # checked before the (long) compilation
    _check_token_range(first_batch, model_config.vocab_size)
    abstract_batch = {n: jax.ShapeDtypeStruct(batch_shape, np.int32, sharding=batch_sharding)
                      for n in ("inputs", "labels")}
    compiled = jitted.lower(state_lib.with_shardings(state, state_shardings), abstract_batch).compile()
    _print_memory(compiled, log)

    peak = metrics_lib.peak_flops_per_device(model_config, train_config.log.peak_flops_per_device)
    tokens_per_step = train_config.batch_size * seq
    bar = metrics_lib.progress_bar(train_config.steps, start, train_config.log.progress and is_main)
    window_start, window_steps, window_flops = time.perf_counter(), 0, 0.0
    depths = step_lib.depth_schedule(train_config, model_config, start, end)
    metrics_host: dict = {}
    for step in range(start, end):
      host_batch = first_batch if step == start else next(data_iter)
      _check_token_range(host_batch, model_config.vocab_size)
      batch = _make_global_batch(host_batch, accum, batch_sharding)
      state, metrics = compiled(state, batch)
      done = step + 1
      bar.update(1)
      window_steps += 1
      window_flops += tokens_per_step * metrics_lib.train_flops_per_token(model_config, seq, *depths[step - start])
      if callbacks or done % train_config.log.every == 0 or done == end:
        metrics_host = {k: v.item() for k, v in jax.device_get(metrics).items()}
      for callback in callbacks:
        callback(done, metrics_host, host_batch)
      if done % train_config.log.every == 0 or done == end:
        elapsed = max(time.perf_counter() - window_start, 1e-9)
        metrics_host["tokens_per_s"] = window_steps * tokens_per_step / elapsed
        metrics_host["mfu"] = window_flops / elapsed / (peak * jax.device_count()) if peak else None
        metrics_host = {k: v for k, v in metrics_host.items() if v is not None}
        writer.write(done, metrics_host)
        history.append({"step": done, **metrics_host})
        bar.set_postfix_str(f"loss {metrics_host['loss']:.4f}")
        if is_main:
          bar.write(metrics_lib.console_line(done, train_config.steps, metrics_host))
        window_start, window_steps, window_flops = time.perf_counter(), 0, 0.0
        if metrics_host["skipped_in_a_row"] >= train_config.optimizer.max_consecutive_nonfinite:
          raise TrainingDiverged(f"{int(metrics_host['skipped_in_a_row'])} consecutive steps had non-finite "
                                 f"gradients (step {done}); lower the learning rate or check the data.")
      if done % train_config.checkpoint.every == 0 or done == end:
        checkpointer.save(done, state, data_iter, meta, force=True)
    return TrainResult(state, history, metrics_host, workdir, mesh)
  finally:
    if bar is not None:
      bar.close()
    checkpointer.close()
    writer.close()
