"""Several seeds of one training run in one program: the real train step ``jax.vmap``-ed over a leading seed axis.

A result that holds for one seed may be luck; ``train_seeds`` trains the same recipe from several seeds at once
(each seed: its own initial weights, data order and initial latent states; by default the depth draws of the first
seed, shared, so that the vmapped recurrence runs one seed's iterations, not the deepest seed's) in one program, or in
a few programs side by side (``groups``), for small models that fit one device many times over. It uses the same
pieces as ``training.loop.train`` (optimizer, train state, train step, grain pipeline) and writes each seed's final
weights as an Orbax checkpoint that ``hj.load`` reads. It does not checkpoint mid-run or resume: use ``train`` for
long runs. Like ``train`` it holds its workdir (``WorkdirLocked``): two runs never write the same checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import threading
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
from huginn_jax.training import side_by_side
from huginn_jax.training import state as state_lib
from huginn_jax.training import step as step_lib
from huginn_jax.training.errors import TrainingStopped
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


def init_states(model_config, optimizer, seeds: Sequence[int]):
  """Every seed's fresh train state, stacked on a leading seed axis: ``state.init_state`` from ``key(s)`` for each
  seed ``s``, vmapped in one compilation (a compilation per seed cost about 4 s each on a 2-core CPU)."""
  keys = jnp.stack([jax.random.key(s) for s in seeds])
  return jax.jit(jax.vmap(lambda key: state_lib.init_state(model_config, optimizer, None, key=key)))(keys)


def seeds_step(model_config, train_config, optimizer, schedule):
  """The real train step over stacked seeds, jitted, the state donated: ``(state, batch, seed ids, depth) -> (state,
  metrics)``, with ``batch`` and ``state`` carrying the seed axis first and one ``depth`` (n, k) for all."""
  step_fn = step_lib.make_train_step(model_config, train_config, optimizer, schedule)
  return jax.jit(jax.vmap(step_fn, in_axes=(0, 0, 0, None)), donate_argnums=(0,))


def train_seeds(train_config: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict,
                seeds: Sequence[int], *, source_for_seed: Callable[[int], Any], workdir: str | None = None,
                save: bool = True, shared_depth: bool = True, groups: int = 1,
                log: Callable[[str], None] | None = None, stop: threading.Event | None = None) -> SeedsResult:
  """Trains ``model_config`` with ``train_config`` once per seed in ``seeds``, the seeds in one vmapped step (or in
  ``groups`` of them).

  ``source_for_seed(seed)`` gives the seed's data source (rows for ``pipeline.from_config``); the seed also sets
  ``train.seed`` (weights, depth draws, initial states) and ``train.data.seed`` (shuffle order) of its copy of the
  run; with ``shared_depth`` every seed draws the depth (n, k) of each step as the first seed does (a seed then
  equals that seed trained alone with the first seed's depth schedule). Logs the median and range of the loss over
  seeds every ``train.log.every`` steps (through ``log`` when given; a progress bar as well, on a terminal only,
  unless ``train.log.progress`` is off), appends them to ``workdir/metrics.jsonl`` and saves seed ``s``'s weights to
  ``workdir/seed_{s}``.

  ``groups`` > 1 splits the seeds into that many groups (in order, sizes differing by at most one), each its own
  vmapped program driven by its own thread, side by side: XLA runs the small ops of a model this size on about one
  core at a time, so on a 2-core CPU two groups train five seeds ~20% faster than one program. A seed's numbers do
  not depend on its group beyond float rounding (every seed still draws the first seed's depths). ``stop``: an
  event that, once set (by another thread; by the run itself when a group fails), ends every group at its next
  step with ``TrainingStopped``.
  """
  seeds = tuple(int(s) for s in seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct integers, at least one; got {seeds}.")
  if groups < 1:
    raise ValueError(f"groups must be a positive number of seed groups, got {groups}.")
  train_config = train_config_lib.validate(train_config, model_config_lib.validate(model_config))
  if train_config.grad_accum_steps != 1:
    raise ValueError("train_seeds runs one micro-batch per step; set train.grad_accum_steps = 1.")
  workdir = os.path.abspath(workdir or train_config.workdir)
  with WorkdirLock(workdir):
    return _train_locked(train_config, model_config, seeds, source_for_seed, workdir, save, shared_depth,
                         min(groups, len(seeds)), log, stop)


class _Reporter:
  """Joins the logged steps of the seed groups: once every group has reported step s, writes one metrics row and
  one log line over all seeds (in seed order). Called from the groups' threads."""

  def __init__(self, seeds, num_groups, steps, tokens_per_step, writer, log):
    self.seeds, self.num_groups, self.steps = seeds, num_groups, steps
    self.tokens_per_step, self.writer, self.log = tokens_per_step, writer, log
    self.history: list[dict] = []
    self._pending: dict[int, dict[int, dict]] = {}
    self._lock = threading.Lock()
    self._window_start, self._last_step = time.perf_counter(), 0

  def report(self, group: int, step: int, host: dict) -> None:
    with self._lock:
      pending = self._pending.setdefault(step, {})
      pending[group] = host
      if len(pending) == self.num_groups:
        del self._pending[step]
        self._write(step, [pending[g] for g in range(self.num_groups)])

  def _write(self, step: int, parts: list[dict]) -> None:
    loss = np.concatenate([p["loss"] for p in parts])
    skipped_total = np.concatenate([p["skipped_total"] for p in parts])
    elapsed = max(time.perf_counter() - self._window_start, 1e-9)
    row = {"step": step, "loss": loss.tolist(), "skipped_total": skipped_total.tolist(),
           "tokens_per_s": self.tokens_per_step * (step - self._last_step) / elapsed}
    self.history.append(row)
    self.writer.write(step, {"loss_median": float(np.median(loss)), "loss_min": float(loss.min()),
                             "loss_max": float(loss.max()), "tokens_per_s": row["tokens_per_s"],
                             **{f"loss_seed{s}": float(v) for s, v in zip(self.seeds, loss)}})
    skipped = int(np.sum(skipped_total))
    self.log(f"step {step}/{self.steps}  loss median {np.median(loss):.4f} (seeds {loss.min():.4f} .. "
             f"{loss.max():.4f})  lr {float(np.asarray(parts[0]['lr']).flat[0]):.2e}  "
             f"tokens_per_s {row['tokens_per_s']:,.0f}" + (f"  skipped {skipped}" if skipped else ""))
    self._window_start, self._last_step = time.perf_counter(), step


def _train_locked(train_config, model_config, seeds, source_for_seed, workdir, save, shared_depth, num_groups,
                  log, stop) -> SeedsResult:
  """The body of ``train_seeds``, run while it holds the workdir."""
  tx, schedule = optimizer_lib.make_optimizer(train_config, train_config.steps)
  run_step = seeds_step(model_config, train_config, tx, schedule)
  if shared_depth:
    first = ml_collections.ConfigDict(train_config.to_dict())
    first.seed = seeds[0]
    depths = step_lib.depth_schedule(first, model_config, 0, train_config.steps)  # [steps, 2]: (n, k)
  else:  # each seed draws its own inside the step
    depths = None
  steps, every = train_config.steps, train_config.log.every
  r, k0 = train_config_lib.depth(train_config, model_config)
  bar = metrics_lib.progress_bar(steps, 0, train_config.log.progress)
  header_log = log or (lambda line: print(line, flush=True))
  groups = [tuple(int(s) for s in group) for group in np.array_split(np.asarray(seeds), num_groups)]
  programs = (f"{num_groups} programs side by side (seed groups {[list(g) for g in groups]})" if num_groups > 1
              else "one program")
  header_log(f"model {model_config.name}: {model_config_lib.num_params(model_config):,} params x {len(seeds)} seeds "
             f"{list(seeds)} in {programs}; batch {train_config.batch_size} x {train_config.seq_len} tokens "
             f"per seed; recurrence r={r}, k0={k0}; {steps} steps")
  writer = metrics_lib.MetricsWriter(workdir, jsonl=train_config.log.jsonl, tensorboard=False)
  reporter = _Reporter(seeds, num_groups, steps, len(seeds) * train_config.batch_size * train_config.seq_len,
                       writer, log or bar.write)
  stop = stop if stop is not None else threading.Event()  # set when a group fails: the others end at their next step

  def train_group(index: int, group: tuple[int, ...]):
    state = init_states(model_config, tx, group)
    iterators = []
    for seed in group:
      per_seed = ml_collections.ConfigDict(train_config.to_dict())
      per_seed.data.seed = seed
      iterators.append(iter(pipeline.from_config(per_seed, source_for_seed(seed))))
    seed_ids = jnp.asarray(group, jnp.int32)
    for done in range(1, steps + 1):
      if stop.is_set():
        raise TrainingStopped(f"training of seeds {list(group)} stopped at step {done - 1} of {steps}.")
      rows = [next(it) for it in iterators]  # each {"inputs", "labels"}: [batch, seq]
      batch = {name: jnp.asarray(np.stack([r[name] for r in rows])[:, None]) for name in ("inputs", "labels")}
      state, metrics = run_step(state, batch, seed_ids, None if depths is None else depths[done - 1])
      if index == 0:
        bar.update(1)
      if done % every == 0 or done == steps:
        reporter.report(index, done, {k: np.asarray(v) for k, v in jax.device_get(metrics).items()})
    return state.params

  start = time.perf_counter()
  try:
    group_params = side_by_side.run_side_by_side(train_group, groups, stop)
  finally:
    bar.close()
    writer.close()
  train_seconds = time.perf_counter() - start
  params = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *group_params)  # seed order: groups are in order
  checkpoints: tuple[str, ...] = ("",) * len(seeds)
  if save:
    from huginn_jax.checkpoint import io
    checkpoints = tuple(io.save(os.path.join(workdir, f"seed_{s}"), model_config,
                                jax.tree.map(lambda leaf, i=i: leaf[i], params), overwrite=True)
                        for i, s in enumerate(seeds))
  return SeedsResult(seeds, params, reporter.history, train_seconds, checkpoints)
