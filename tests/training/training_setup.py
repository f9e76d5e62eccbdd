"""Shared setup of the training tests: the tiny experiment with short sequences, a learnable generated corpus, and
a compilation cache shared by the whole session (runs with the same config reuse the compiled train step)."""

import os

import numpy as np

from huginn_jax.training import config as train_config

EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs", "tiny_cpu.py")
SEQ, BATCH = 16, 4
# The short run: long enough for a crash between two checkpoints and a resume through the cooldown, and no longer
# (its steps run on a mesh of 8 simulated devices, slow on a 2-core CI machine).
STEPS, SAVE_EVERY = 8, 4


def counting_corpus(rows: int, seq: int, vocab: int = 256, seed: int = 0) -> np.ndarray:
  """Rows that count upward from a random start with a random stride of 1, 2 or 3 (mod vocab): learnable from
  the first two tokens, so the loss of a model that learns falls far below ln(vocab)."""
  rng = np.random.default_rng(seed)
  start = rng.integers(0, vocab, (rows, 1))
  stride = rng.integers(1, 4, (rows, 1))
  return ((start + stride * np.arange(seq + 1)) % vocab).astype(np.int32)


def cache_dir(tmp_path_factory) -> str:
  path = tmp_path_factory.getbasetemp() / "jax_compilation_cache"
  path.mkdir(exist_ok=True)
  return str(path)


def short_run_overrides(workdir, data_file, cache, init_from) -> list[str]:
  """A ``STEPS``-step run of the tiny experiment on a 2x2x2 mesh, fine-tuning the golden tiny checkpoint."""
  return [f"train.workdir='{workdir}'", f"train.data.train_files=('{data_file}',)", f"train.steps={STEPS}",
          f"train.seq_len={SEQ}", f"train.batch_size={BATCH}", f"train.checkpoint.every={SAVE_EVERY}",
          "train.log.every=1", "train.log.progress=False", "train.optimizer.warmup_steps=0",
          "train.optimizer.cooldown_steps=5",
          "train.optimizer.weight_decay=0.1", "train.mesh.data=2", "train.mesh.fsdp=2", "train.mesh.tensor=2",
          f"train.compilation_cache_dir='{cache}'", f"train.init_from='{init_from}'"]


def short_run(workdir, data_file, cache, init_from):
  """(model config, train config) of ``short_run_overrides``."""
  experiment = train_config.apply_overrides(train_config.load_experiment(EXPERIMENT),
                                            short_run_overrides(workdir, data_file, cache, init_from))
  return experiment.model, experiment.train
