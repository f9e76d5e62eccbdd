"""Several seeds in one vmapped program: each seed's run equals the same seed trained alone, and every seed's
weights are saved where ``hj.load`` reads them."""

import os

import jax
import numpy as np
import pytest

import huginn_jax as hj
from huginn_jax.data import pipeline
from huginn_jax.tasks.running_parity import RunningParitySource
from huginn_jax.training import config as train_config_lib
from huginn_jax.training import optimizer as opt_lib
from huginn_jax.training import state as state_lib
from huginn_jax.training import step as step_lib
from huginn_jax.training.seeds import train_seeds
from huginn_jax.training.workdir_lock import WorkdirLock, WorkdirLocked

SEEDS, STEPS, SEQ, BATCH = (3, 7), 4, 8, 4


def _configs():
  model = hj.get_config("tiny", vocab_size=4, d_model=32, n_heads=2, head_dim=16, intermediate_size=64,
                        n_layers_prelude=1, n_layers_core=1, n_layers_coda=1, max_seq_len=SEQ, mean_recurrence=3,
                        mean_backprop_depth=2)
  train = train_config_lib.get_train_config("tiny_cpu", steps=STEPS, batch_size=BATCH, seq_len=SEQ)
  train.data.shuffle = False
  train.log.every = 2
  train.optimizer.warmup_steps, train.optimizer.cooldown_steps = 1, 1
  train.log.progress = False
  return model, train


def _alone(model, train, seed, depth_seed=None):
  """The seed trained by itself through the plain jitted step: its own init key and data; the depth draws of
  ``depth_seed`` (default: its own)."""
  tx, schedule = opt_lib.make_optimizer(train, train.steps)
  train = train.copy_and_resolve_references()
  train.seed, train.data.seed = seed, seed
  state = state_lib.init_state(model, tx, None, key=jax.random.key(seed))
  step = jax.jit(step_lib.make_train_step(model, train, tx, schedule))
  data = iter(pipeline.from_config(train, RunningParitySource(STEPS * BATCH, SEQ, seed=seed)))
  depths = [None] * STEPS
  if depth_seed is not None:
    other = train.copy_and_resolve_references()
    other.seed = depth_seed
    depths = step_lib.depth_schedule(other, model, 0, STEPS)
  losses = []
  for depth in depths:
    batch = {k: v[None] for k, v in next(data).items()}
    state, metrics = step(state, batch, None, depth)
    losses.append(float(metrics["loss"]))
  return state.params, losses


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
  model, train = _configs()
  workdir = tmp_path_factory.mktemp("seeds")
  result = train_seeds(train, model, SEEDS, workdir=str(workdir),
                       source_for_seed=lambda seed: RunningParitySource(STEPS * BATCH, SEQ, seed=seed))
  return model, train, result


@pytest.fixture(scope="module")
def second_seed_alone():
  """Seed ``SEEDS[1]`` trained alone with its own depth draws (one compilation for the two tests below)."""
  model, train = _configs()
  return _alone(model, train, SEEDS[1])


def _assert_run_equals(result, i, params, losses):
  np.testing.assert_allclose([row["loss"][i] for row in result.history], [losses[1], losses[3]], rtol=1e-5)
  for got, want in zip(jax.tree.leaves(result.seed_params(i)), jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


def test_a_seed_equals_the_seed_trained_alone_on_the_shared_depth_schedule(seeds_run, second_seed_alone):
  model, train, result = seeds_run
  i = 1  # not the first: the seed axis must line up for every seed
  _assert_run_equals(result, i, *_alone(model, train, SEEDS[i], depth_seed=SEEDS[0]))
  own_params, _ = second_seed_alone  # the shared schedule differs from the seed's own here
  assert not np.allclose(jax.tree.leaves(own_params)[0], jax.tree.leaves(result.seed_params(i))[0])


def test_a_seed_with_its_own_depth_draws_equals_the_seed_trained_alone(second_seed_alone):
  model, train = _configs()
  result = train_seeds(train, model, SEEDS, save=False, shared_depth=False,
                       source_for_seed=lambda seed: RunningParitySource(STEPS * BATCH, SEQ, seed=seed))
  _assert_run_equals(result, 1, *second_seed_alone)


def test_seeds_differ_and_their_weights_are_saved(seeds_run):
  model, _, result = seeds_run
  first, second = (jax.tree.leaves(result.seed_params(i))[0] for i in range(2))
  assert not np.allclose(first, second)
  assert [row["step"] for row in result.history] == [2, 4]
  for i, path in enumerate(result.checkpoints):
    config, params = hj.load(path)
    assert config.d_model == model.d_model
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(result.seed_params(i))):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_seed_groups_side_by_side_equal_one_program_and_log_one_line_per_step(seeds_run):
  """Two groups (one seed each, two threads) give every seed the numbers of the one-program run, in seed order, and
  their logged steps are joined into one line and one history row each."""
  model, train, together = seeds_run
  lines = []
  result = train_seeds(train, model, SEEDS, save=False, groups=2, log=lines.append,
                       source_for_seed=lambda seed: RunningParitySource(STEPS * BATCH, SEQ, seed=seed))
  assert [row["step"] for row in result.history] == [2, 4]
  np.testing.assert_allclose([row["loss"] for row in result.history], [row["loss"] for row in together.history],
                             rtol=1e-5)
  for got, want in zip(jax.tree.leaves(result.params), jax.tree.leaves(together.params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
  assert "in 2 programs side by side (seed groups [[3], [7]])" in lines[0]
  assert [line.split("  ")[0] for line in lines[1:]] == ["step 2/4", "step 4/4"]


class _CountingSource(RunningParitySource):
  """Counts the rows read; raises at row ``fail_at`` when given."""

  def __init__(self, *args, fail_at=None, **kwargs):
    super().__init__(*args, **kwargs)
    self.fail_at, self.rows_read = fail_at, 0

  def __getitem__(self, index):
    if index == self.fail_at:
      raise OSError("disk gone")
    self.rows_read += 1
    return super().__getitem__(index)


def test_an_error_in_one_seed_group_stops_the_others_and_is_raised():
  model, train = _configs()
  train.steps = 400
  sources = {seed: _CountingSource(400 * BATCH, SEQ, seed=seed, fail_at=BATCH if seed == SEEDS[1] else None)
             for seed in SEEDS}  # the second seed's group fails at its second step's first row
  with pytest.raises(OSError, match="disk gone"):
    train_seeds(train, model, SEEDS, save=False, groups=2, source_for_seed=sources.get)
  assert sources[SEEDS[0]].rows_read < 100 * BATCH  # the healthy group stopped, it did not train its 400 steps


def test_seeds_must_be_distinct():
  model, train = _configs()
  with pytest.raises(ValueError, match="distinct"):
    train_seeds(train, model, (1, 1), source_for_seed=lambda seed: RunningParitySource(8, SEQ), save=False)
  with pytest.raises(ValueError, match="groups must be a positive"):
    train_seeds(train, model, SEEDS, source_for_seed=lambda seed: RunningParitySource(8, SEQ), save=False, groups=0)


def test_a_held_workdir_is_refused_before_anything_is_written(tmp_path):
  """Two seed runs on one workdir would write the same checkpoints: the second is refused, naming the first."""
  model, train = _configs()
  with WorkdirLock(str(tmp_path)):
    with pytest.raises(WorkdirLocked, match=f"in use by another training run \\(pid {os.getpid()}.*--workdir"):
      train_seeds(train, model, SEEDS, source_for_seed=lambda seed: RunningParitySource(8, SEQ),
                  workdir=str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["train.lock"]  # no metrics, no checkpoints
