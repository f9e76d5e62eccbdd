"""The training loop: ``train(train_config, model_config)`` from Python, ``huginn-jax train`` from the shell.

One run, in three parts: ``setup`` (lock the workdir, build the mesh, shardings, optimizer, data iterator,
checkpointer and metrics writer), ``restore_or_init`` (resume the state and the data iterator from the latest
checkpoint, or create it: random, or from a checkpoint to fine-tune), and ``run_steps`` (step until the end, a stop
signal or divergence, with the per-step work in ``hooks``). Returns the final state and the logged metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from huginn_jax import api
from huginn_jax import config as model_config_lib
from huginn_jax import sharding as sharding_lib
from huginn_jax.checkpoint import io as checkpoint_io
from huginn_jax.checkpoint.manager import TrainCheckpointer, remove_leftovers
from huginn_jax.data import pipeline
from huginn_jax.training import config as train_config_lib
from huginn_jax.training import hooks as hooks_lib
from huginn_jax.training import metrics as metrics_lib
from huginn_jax.training import optimizer as optimizer_lib
from huginn_jax.training import state as state_lib
from huginn_jax.training import step as step_lib
from huginn_jax.training.errors import TrainingDiverged, WorkdirLocked  # noqa: F401  (re-exported)
from huginn_jax.training.hooks import StepCallback
from huginn_jax.training.stop_signals import StopSignals
from huginn_jax.training.workdir_lock import WorkdirLock


@dataclasses.dataclass
class TrainResult:
  state: state_lib.TrainState
  history: list[dict]  # the logged metrics, one dict per logged step
  final_metrics: dict
  workdir: str
  mesh: Any
  stopped_by: str | None = None  # "SIGTERM" / "SIGINT" when a signal ended the run early (with a checkpoint)


def load_finetune_params(path: str, model_config, shardings):
  """Params of a converted (or HF) checkpoint, placed straight into ``shardings`` in the model's param dtype."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"train.init_from: no checkpoint at {path}.")
  saved = checkpoint_io.read_config(path)
  diff = {k: (v, model_config[k]) for k, v in model_config_lib.shape_fields(saved).items() if model_config[k] != v}
  if diff:
    raise ValueError(f"train.init_from {path} has another model shape than the model config: "
                     + ", ".join(f"{k}={a} there vs {b} here" for k, (a, b) in diff.items())
                     + "; take the model config from the checkpoint (e.g. hj.get_config('huginn-0125')).")
  _, params = checkpoint_io.load(path, dtype=model_config.param_dtype, shardings=shardings)
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


@dataclasses.dataclass
class RunSetup:
  """Everything a run builds once before its first step."""
  train_config: ml_collections.ConfigDict
  model_config: ml_collections.ConfigDict
  workdir: str
  log: Callable[[str], None]
  is_main: bool
  mesh: Any
  rules: dict
  param_shardings: Any
  tx: Any
  schedule: Any
  state_shardings: Any
  batch_shape: tuple[int, int, int]
  batch_sharding: Any
  data_iter: Any
  checkpointer: TrainCheckpointer
  writer: metrics_lib.MetricsWriter
  meta: dict

  def close(self) -> None:
    self.checkpointer.close()
    self.writer.close()


def setup(train_config, model_config, *, workdir: str, source=None, devices=None, log=None) -> RunSetup:
  """Mesh, shardings, optimizer, checkpointer, data iterator and metrics writer of a (validated) run; refuses a
  resume whose training config changed a field it must keep (``train_config.RESUME_FIXED``)."""
  is_main = jax.process_index() == 0
  log = log or (lambda s: print(s, flush=True) if is_main else None)
  if train_config.get("compilation_cache_dir"):
    enable_compilation_cache(train_config.compilation_cache_dir)
  mesh = sharding_lib.make_mesh(dict(train_config.mesh), devices)
  rules = sharding_lib.rules_table(train_config.sharding_rules)
  param_shardings = sharding_lib.param_shardings(model_config, mesh, rules)
  tx, schedule = optimizer_lib.make_optimizer(train_config, train_config.steps)
  state_shardings = state_lib.state_shardings(model_config, tx, mesh, param_shardings)
  accum = train_config.grad_accum_steps
  batch_shape = (accum, train_config.batch_size // accum, train_config.seq_len)
  batch_sharding = step_lib.batch_sharding(mesh, rules, batch_shape)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  if is_main:
    for path in remove_leftovers(checkpoint_dir):
      log(f"removed {path}: an incomplete checkpoint left by an interrupted run")
  checkpointer = TrainCheckpointer(checkpoint_dir, keep=train_config.checkpoint.keep,
                                   async_save=train_config.checkpoint.async_save)
  meta = {"model_config": model_config.to_dict(), "train_config": json.loads(train_config.to_json_best_effort())}
  latest = checkpointer.latest_step() if train_config.checkpoint.resume else None
  try:
    if latest is not None:  # before the data files are opened: a changed file list is named as such
      saved = checkpointer.read_meta(latest).get("train_config")
      if saved is not None:
        train_config_lib.check_resume_compatible(saved, meta["train_config"],
                                                 f"checkpoint step {latest} in {checkpointer.directory}")
    # The data position is a function of the step (pipeline.HostRow): a resume rebuilds it for any process count.
    data_iter = iter(pipeline.from_config(train_config, source, start_step=latest or 0))
  except BaseException:
    checkpointer.close()
    raise
  writer = metrics_lib.MetricsWriter(workdir, jsonl=train_config.log.jsonl, tensorboard=train_config.log.tensorboard,
                                     enabled=is_main)
  return RunSetup(train_config, model_config, workdir, log, is_main, mesh, rules, param_shardings, tx, schedule,
                  state_shardings, batch_shape, batch_sharding, data_iter, checkpointer, writer, meta)


def restore_or_init(run: RunSetup, params=None):
  """The train state to start from: the latest checkpoint of the workdir when resuming (``setup`` started the data
  at its step), else ``params``, else ``train.init_from``, else random. Metrics rows after the start step are
  dropped."""
  train_config, model_config = run.train_config, run.model_config
  latest = run.checkpointer.latest_step() if train_config.checkpoint.resume else None
  if latest is not None:  # setup checked that the training config may resume it
    abstract = state_lib.with_shardings(state_lib.abstract_state(model_config, run.tx), run.state_shardings)
    state, _ = run.checkpointer.restore(abstract, step=latest, model_config=model_config.to_dict())
    run.log(f"resumed from {run.checkpointer.directory} at step {latest}")
  else:
    if params is None and train_config.init_from:
      params = load_finetune_params(train_config.init_from, model_config, run.param_shardings)
      run.log(f"fine-tuning from {train_config.init_from}")
    if params is not None:
      params = jax.device_put(params, run.param_shardings)
    state = state_lib.init_state(model_config, run.tx, run.state_shardings, key=jax.random.key(train_config.seed),
                                 params=params)
  run.writer.truncate_after(latest or 0)
  return state


def _compile(run: RunSetup, state, first_batch):
  """The train step compiled for the run's shardings (the first batch is checked before the long compilation)."""
  _check_token_range(first_batch, run.model_config.vocab_size)
  step_fn = step_lib.make_train_step(run.model_config, run.train_config, run.tx, run.schedule, mesh=run.mesh,
                                     rules=run.rules)
  jitted = step_lib.jit_train_step(step_fn, run.state_shardings,
                                   {"inputs": run.batch_sharding, "labels": run.batch_sharding})
  abstract_batch = {n: jax.ShapeDtypeStruct(run.batch_shape, np.int32, sharding=run.batch_sharding)
                    for n in ("inputs", "labels")}
  compiled = jitted.lower(state_lib.with_shardings(state, run.state_shardings), abstract_batch).compile()
  _print_memory(compiled, run.log)
  return compiled


def run_steps(run: RunSetup, state, start: int, end: int, callbacks: Sequence[StepCallback] = (),
              stop: StopSignals | None = None) -> TrainResult:
  """Steps ``start`` -> ``end``; after each step the hooks run, then a stop signal (if any) saves and ends."""
  train_config, model_config = run.train_config, run.model_config
  r, k0 = train_config_lib.depth(train_config, model_config)
  run.log(f"model {model_config.name}: {model_config_lib.num_params(model_config):,} params; mesh "
          f"{dict(run.mesh.shape)}; batch {train_config.batch_size} x {train_config.seq_len} tokens "
          f"({train_config.grad_accum_steps} micro-batches); recurrence r={r}, k0={k0}; steps {start}->{end}")
  first_batch = next(run.data_iter)
  compiled = _compile(run, state, first_batch)

  seq = train_config.seq_len
  tokens_per_step = train_config.batch_size * seq
  depths = step_lib.depth_schedule(train_config, model_config, start, end)
  flops_of_step = lambda step: tokens_per_step * metrics_lib.train_flops_per_token(  # noqa: E731
      model_config, seq, *depths[step - start])
  bar = metrics_lib.progress_bar(train_config.steps, start, train_config.log.progress and run.is_main)
  checkpointing = hooks_lib.Checkpointing(run.checkpointer, run.meta, train_config.checkpoint.every)
  peak = metrics_lib.peak_flops_per_device(model_config, train_config.log.peak_flops_per_device)
  logging = hooks_lib.MetricsLog(train_config.log.every, train_config.steps, run.writer, bar, flops_of_step,
                                 tokens_per_step, peak, run.is_main)
  hooks = [hooks_lib.DivergenceCheck(train_config.optimizer, lambda: checkpointing.last_saved),
           hooks_lib.Callbacks(callbacks), logging, checkpointing]
  ctx = None
  try:
    for step in range(start, end):
      host_batch = first_batch if step == start else next(run.data_iter)
      _check_token_range(host_batch, model_config.vocab_size)
      state, metrics = compiled(state, _make_global_batch(host_batch, train_config.grad_accum_steps,
                                                          run.batch_sharding))
      ctx = hooks_lib.StepContext(step + 1, end, state, metrics, host_batch)
      for hook in hooks:
        hook.after_step(ctx)
      signal_name = stop.requested(ctx.step) if stop is not None else None
      if signal_name is not None and ctx.step < end:
        checkpointing.save(ctx)
        run.log(f"{signal_name}: stopped at step {ctx.step} of {train_config.steps} with a checkpoint in "
                f"{run.checkpointer.directory}; rerun the same command to continue.")
        return TrainResult(state, logging.history, ctx.host_metrics(), run.workdir, run.mesh, signal_name)
  finally:
    bar.close()
  return TrainResult(state, logging.history, ctx.host_metrics(), run.workdir, run.mesh)


def train(train_config: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict, *, source=None,
          params=None, workdir: str | None = None, stop_after: int | None = None,
          callbacks: Sequence[StepCallback] = (), devices: Sequence[jax.Device] | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
  """Trains ``model_config`` with ``train_config``; returns the final state and logged metrics.

  ``source``: token rows to train on instead of ``train.data.train_files`` (a [rows, seq_len + 1] integer array
  or any random-access source). ``params``: initial params (fine-tuning from Python); else ``train.init_from``,
  else random. A run resumes from the latest checkpoint in ``workdir/checkpoints`` when ``train.checkpoint.resume``.
  ``stop_after`` ends this call after that many steps, saving a checkpoint there, so the next call continues the
  same run exactly (train in chunks, evaluate in between). One run at a time per workdir (``WorkdirLocked``);
  SIGTERM / SIGINT end the run at the next step boundary with a checkpoint (``TrainResult.stopped_by``).
  """
  train_config = train_config_lib.validate(train_config, model_config_lib.validate(model_config))
  sharding_lib.maybe_initialize_distributed(train_config.get("distributed", "auto"))
  workdir = os.path.abspath(workdir or train_config.workdir)
  with contextlib.ExitStack() as stack:
    stack.enter_context(WorkdirLock(workdir, jax.process_index(), jax.process_count()))
    stop = stack.enter_context(StopSignals())
    run = setup(train_config, model_config, workdir=workdir, source=source, devices=devices, log=log)
    stack.callback(run.close)
    state = restore_or_init(run, params)
    start = int(state.step)
    end = train_config.steps if stop_after is None else min(train_config.steps, start + stop_after)
    if start >= end:
      run.log(f"nothing to do: the state is at step {start} of {train_config.steps}")
      return TrainResult(state, [], {}, workdir, run.mesh)
    return run_steps(run, state, start, end, callbacks, stop)
