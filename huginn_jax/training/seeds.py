"""Several seeds of one training run in one program: the real train step ``jax.vmap``-ed over a leading seed axis.

A result that holds for one seed may be luck; ``train_seeds`` trains the same recipe from several seeds at once
(each seed: its own initial weights, data order and initial latent states; by default the depth draws of the first
seed, shared, so that the vmapped recurrence runs one seed's iterations, not the deepest seed's) with one
compilation and one loop, for small models that fit one device many times over. It uses the same pieces as ``training.loop.train``
(optimizer, train state, train step, grain pipeline) and writes each seed's final weights as an Orbax checkpoint
that ``hj.load`` reads. It does not checkpoint mid-run or resume: use ``train`` for long runs. Like ``train`` it
holds its workdir (``WorkdirLocked``): two runs never write the same checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from huginn_jax import config as model_config_lib
from huginn_jax.data import pipeline
from huginn_jax.training import config as train_config_lib
from huginn_jax.training import metrics as metrics_lib
from huginn_jax.training import optimizer as optimizer_lib
from huginn_jax.training import state as state_lib
from huginn_jax.training import step as step_lib
from huginn_jax.training.workdir_lock import WorkdirLock


@dataclasses.dataclass
class SeedsResult:
  seeds: tuple[int, ...]
  params: Any  # the final params of every seed, each leaf stacked on a leading [num_seeds] axis
  history: list[dict]  # per logged step: {"step": s, "loss": [per seed], ...}
  train_seconds: float
  checkpoints: tuple[str, ...]  # one Orbax directory per seed ("" when not saved)

  def seed_params(self, index: int):
    """The params of the ``index``-th seed, unstacked."""
    return jax.tree.map(lambda leaf: leaf[index], self.params)


def _init_states(model_config, optimizer, seeds: Sequence[int]):
  """Every seed's fresh train state, stacked on a leading seed axis: ``state.init_state`` from ``key(s)`` for each
  seed ``s``, vmapped in one compilation (a compilation per seed cost about 4 s each on a 2-core CPU)."""
  keys = jnp.stack([jax.random.key(s) for s in seeds])
  return jax.jit(jax.vmap(lambda key: state_lib.init_state(model_config, optimizer, None, key=key)))(keys)


def train_seeds(train_config: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict,
                seeds: Sequence[int], *, source_for_seed: Callable[[int], Any], workdir: str | None = None,
                save: bool = True, shared_depth: bool = True,
                log: Callable[[str], None] | None = None) -> SeedsResult:
  """Trains ``model_config`` with ``train_config`` once per seed in ``seeds``, all seeds in one vmapped step.

  ``source_for_seed(seed)`` gives the seed's data source (rows for ``pipeline.from_config``); the seed also sets
  ``train.seed`` (weights, depth draws, initial states) and ``train.data.seed`` (shuffle order) of its copy of the
  run; with ``shared_depth`` every seed draws the depth (n, k) of each step as the first seed does (a seed then
  equals that seed trained alone with the first seed's depth schedule). Logs the median and range of the loss over seeds every ``train.log.every`` steps (a progress bar only on a
  terminal), appends them to ``workdir/metrics.jsonl`` and saves seed ``s``'s weights to ``workdir/seed_{s}``.
  """
  seeds = tuple(int(s) for s in seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct integers, at least one; got {seeds}.")
  train_config = train_config_lib.validate(train_config, model_config_lib.validate(model_config))
  if train_config.grad_accum_steps != 1:
    raise ValueError("train_seeds runs one micro-batch per step; set train.grad_accum_steps = 1.")
  workdir = os.path.abspath(workdir or train_config.workdir)
  with WorkdirLock(workdir):
    return _train_locked(train_config, model_config, seeds, source_for_seed, workdir, save, shared_depth, log)


def _train_locked(train_config, model_config, seeds, source_for_seed, workdir, save, shared_depth, log) -> SeedsResult:
  """The body of ``train_seeds``, run while it holds the workdir."""
  log = log or (lambda line: print(line, flush=True))
  tx, schedule = optimizer_lib.make_optimizer(train_config, train_config.steps)
  step_fn = step_lib.make_train_step(model_config, train_config, tx, schedule)
  run_step = jax.jit(jax.vmap(step_fn, in_axes=(0, 0, 0, None)), donate_argnums=(0,))
  state = _init_states(model_config, tx, seeds)
  iterators = []
  for seed in seeds:
    per_seed = ml_collections.ConfigDict(train_config.to_dict())
    per_seed.data.seed = seed
    iterators.append(iter(pipeline.from_config(per_seed, source_for_seed(seed))))
  seed_ids = jnp.asarray(seeds, jnp.int32)
  if shared_depth:
    first = ml_collections.ConfigDict(train_config.to_dict())
    first.seed = seeds[0]
    depths = step_lib.depth_schedule(first, model_config, 0, train_config.steps)  # [steps, 2]: (n, k)
  else:  # each seed draws its own inside the step
    depths = None

  def next_batch() -> dict:
    rows = [next(it) for it in iterators]  # each {"inputs", "labels"}: [batch, seq]
    return {name: jnp.asarray(np.stack([r[name] for r in rows])[:, None]) for name in ("inputs", "labels")}

  steps, every = train_config.steps, train_config.log.every
  tokens_per_step = len(seeds) * train_config.batch_size * train_config.seq_len
  r, k0 = train_config_lib.depth(train_config, model_config)
  log(f"model {model_config.name}: {model_config_lib.num_params(model_config):,} params x {len(seeds)} seeds "
      f"{list(seeds)} in one program; batch {train_config.batch_size} x {train_config.seq_len} tokens per seed; "
      f"recurrence r={r}, k0={k0}; {steps} steps")
  writer = metrics_lib.MetricsWriter(workdir, jsonl=train_config.log.jsonl, tensorboard=False)
  bar = metrics_lib.progress_bar(steps, 0, train_config.log.progress)
  history: list[dict] = []
  start = window_start = time.perf_counter()
  try:
    for done in range(1, steps + 1):
      state, metrics = run_step(state, next_batch(), seed_ids, None if depths is None else depths[done - 1])
      bar.update(1)
      if done % every == 0 or done == steps:
        host = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
        loss = host["loss"]
        row = {"step": done, "loss": loss.tolist(), "skipped_total": host["skipped_total"].tolist()}
        elapsed = max(time.perf_counter() - window_start, 1e-9)
        row["tokens_per_s"] = tokens_per_step * (every if done % every == 0 else done % every) / elapsed
        history.append(row)
        writer.write(done, {"loss_median": float(np.median(loss)), "loss_min": float(loss.min()),
                            "loss_max": float(loss.max()), "tokens_per_s": row["tokens_per_s"],
                            **{f"loss_seed{s}": float(v) for s, v in zip(seeds, loss)}})
        skipped = int(np.sum(host["skipped_total"]))
        bar.write(f"step {done}/{steps}  loss median {np.median(loss):.4f} (seeds {loss.min():.4f} .. "
                  f"{loss.max():.4f})  lr {float(np.asarray(host['lr']).flat[0]):.2e}  "
                  f"tokens_per_s {row['tokens_per_s']:,.0f}" + (f"  skipped {skipped}" if skipped else ""))
        window_start = time.perf_counter()
  finally:
    bar.close()
    writer.close()
  train_seconds = time.perf_counter() - start
  checkpoints: tuple[str, ...] = ("",) * len(seeds)
  if save:
    from huginn_jax.checkpoint import io
    checkpoints = tuple(io.save(os.path.join(workdir, f"seed_{s}"), model_config,
                                jax.tree.map(lambda leaf, i=i: leaf[i], state.params), overwrite=True)
                        for i, s in enumerate(seeds))
  return SeedsResult(seeds, state.params, history, train_seconds, checkpoints)
