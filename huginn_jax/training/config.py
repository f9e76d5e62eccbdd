"""Training configs (separate from the model config): presets and experiment files.

An experiment file (``experiments/configs/*.py``) defines ``get_config()`` returning a ConfigDict with two
sections, ``model`` (a model config from ``hj.get_config``) and ``train`` (one of these training configs).
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Callable

import ml_collections
from ml_collections import config_dict

from huginn_jax import config as model_config_lib
from huginn_jax.model import REMAT_POLICIES
from huginn_jax.training.sampler import SAMPLERS


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "base"
  c.seed = 0
  c.steps = 1000  # optimizer steps
  c.batch_size = 8  # sequences per optimizer step, over all hosts and micro-batches
  c.grad_accum_steps = 1  # micro-batches per optimizer step (batch_size must divide by it)
  c.seq_len = 4096  # tokens per sequence; data rows hold seq_len + 1 tokens
  # Stochastic depth: None takes the model config's mean_recurrence / mean_backprop_depth.
  c.mean_recurrence = config_dict.placeholder(int)
  c.mean_backprop_depth = config_dict.placeholder(int)
  c.sampler_sigma = 0.5
  c.depth_sampler = "poisson_lognormal"  # the original's; "fixed" runs exactly mean_recurrence iterations
  c.init_scale = 1.0  # std multiplier of the random initial latent state (0 = zeros)
  # jax.checkpoint policy of each gradient iteration ("none" disables); the one home of this setting in training
  c.remat_policy = "nothing_saveable"
  c.loss_chunk = 1024  # positions per chunk of the vocabulary projection + cross-entropy (0: all at once)
  c.init_from = config_dict.placeholder(str)  # a checkpoint to fine-tune from (HF dir or our Orbax dir)
  c.workdir = "outputs/run"
  c.distributed = "auto"  # jax.distributed.initialize(): "auto" (when several hosts are detected), True, False
  c.compilation_cache_dir = config_dict.placeholder(str)  # JAX persistent compilation cache

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam_atan2"  # the original's; or "adamw"
  c.optimizer.lr = 4e-5
  c.optimizer.min_lr = 0.0
  c.optimizer.betas = (0.9, 0.95)
  c.optimizer.eps = 1e-6  # only the update-clipping floor for adam_atan2
  c.optimizer.weight_decay = 4e-5  # decoupled; scaled by lr(t) / lr for adam_atan2
  c.optimizer.update_clipping = True
  c.optimizer.running_init = True  # moments start at the first gradient, as in the original's run
  c.optimizer.grad_clip = 1.0
  c.optimizer.schedule = "trapezoid"
  c.optimizer.warmup_steps = 100
  c.optimizer.cooldown_steps = 100
  c.optimizer.skip_nonfinite = True
  c.optimizer.max_consecutive_nonfinite = 20  # the loop stops after this many skipped steps in a row

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices left after the other axes
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.sharding_rules = ()  # ((logical_axis, mesh_axis or None or tuple of mesh axes), ...) overriding the defaults

  c.data = ml_collections.ConfigDict()
  c.data.format = "parquet"  # "parquet" | "arrayrecord"
  c.data.train_files = ()  # files or glob patterns
  c.data.column = "input_ids"
  c.data.shuffle = True
  c.data.seed = 0
  c.data.num_epochs = config_dict.placeholder(int)  # None repeats forever
  c.data.worker_count = 0  # grain multiprocessing workers (0 = in-process)
  c.data.read_threads = 2
  c.data.prefetch = 4  # batches prefetched

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 1000  # save every N steps (and at the end)
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True
  c.checkpoint.resume = True  # continue from the latest checkpoint in workdir/checkpoints if there is one
  c.checkpoint.allow_changes = ()  # fields of RESUME_FIXED a resume may change anyway, e.g. ("optimizer.lr",)

  c.log = ml_collections.ConfigDict()
  c.log.every = 10
  c.log.progress = True
  c.log.jsonl = True
  c.log.tensorboard = True
  c.log.peak_flops_per_device = config_dict.placeholder(float)  # None: looked up from the device kind
  return c


def tiny_cpu() -> ml_collections.ConfigDict:
  """Minutes on a laptop CPU: short sequences, shallow recurrence, a fast learning rate."""
  c = _base()
  c.name = "tiny_cpu"
  c.steps = 300
  c.batch_size = 8
  c.seq_len = 32
  c.mean_recurrence = 4
  c.mean_backprop_depth = 2
  c.remat_policy = "none"
  c.optimizer.lr = 3e-3
  c.optimizer.weight_decay = 0.0
  c.optimizer.warmup_steps = 20
  c.optimizer.cooldown_steps = 50
  c.checkpoint.every = 100
  c.log.every = 10
  return c


def huginn_0125_pretrain() -> ml_collections.ConfigDict:
  """The original's recipe: 4096 x 4096 tokens a step, lr 4e-5 with 4096 warmup and cooldown steps."""
  c = _base()
  c.name = "huginn_0125_pretrain"
  c.steps = 60000
  c.batch_size = 4096
  c.seq_len = 4096
  c.optimizer.warmup_steps = 4096
  c.optimizer.cooldown_steps = 4096
  c.checkpoint.every = 128
  c.log.every = 4
  return c


def huginn_0125_finetune() -> ml_collections.ConfigDict:
  """Fine-tuning the published checkpoint: the original's optimizer, a short warmup and cooldown."""
  c = _base()
  c.name = "huginn_0125_finetune"
  c.steps = 1000
  c.batch_size = 64
  c.seq_len = 4096
  c.optimizer.lr = 1e-5
  c.optimizer.warmup_steps = 50
  c.optimizer.cooldown_steps = 100
  c.checkpoint.every = 200
  c.mesh.fsdp = -1
  c.mesh.data = 1
  return c


PRESETS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "base": _base,
    "tiny_cpu": tiny_cpu,
    "huginn_0125_pretrain": huginn_0125_pretrain,
    "huginn_0125_finetune": huginn_0125_finetune,
}


def get_train_config(name: str = "base", **overrides: Any) -> ml_collections.ConfigDict:
  """A copy of the named training preset with top-level ``overrides`` applied."""
  return model_config_lib.from_preset(PRESETS, name, overrides, kind="training config")


def depth(train: ml_collections.ConfigDict, model: ml_collections.ConfigDict) -> tuple[int, int]:
  """(mean recurrence r, gradient iterations k0) of a run: the training config's, else the model's."""
  r = train.mean_recurrence if train.mean_recurrence is not None else model.mean_recurrence
  k0 = train.mean_backprop_depth if train.mean_backprop_depth is not None else model.mean_backprop_depth
  return int(r), int(k0)


def validate(train: ml_collections.ConfigDict, model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks the training config against itself and the model; raises ``ValueError`` naming the field."""
  for field in ("steps", "batch_size", "grad_accum_steps", "seq_len"):
    if not isinstance(train[field], int) or train[field] <= 0:
      raise ValueError(f"train.{field} must be a positive integer, got {train[field]!r}.")
  if train.batch_size % train.grad_accum_steps:
    raise ValueError(f"train.batch_size ({train.batch_size}) must be divisible by train.grad_accum_steps "
                     f"({train.grad_accum_steps}).")
  if train.seq_len > model.max_seq_len:
    raise ValueError(f"train.seq_len ({train.seq_len}) exceeds the model's max_seq_len ({model.max_seq_len}).")
  r, k0 = depth(train, model)
  if r < 1 or k0 < 1:
    raise ValueError(f"mean_recurrence ({r}) and mean_backprop_depth ({k0}) must be >= 1 for training.")
  if not isinstance(train.loss_chunk, int) or train.loss_chunk < 0:
    raise ValueError(f"train.loss_chunk must be a number of positions >= 0 (0 = no chunking), got "
                     f"{train.loss_chunk!r}.")
  if train.depth_sampler not in SAMPLERS:
    raise ValueError(f"train.depth_sampler must be one of {SAMPLERS}, got {train.depth_sampler!r}.")
  if train.remat_policy not in REMAT_POLICIES:
    raise ValueError(f"train.remat_policy must be one of {sorted(REMAT_POLICIES)}, got {train.remat_policy!r}.")
  opt = train.optimizer
  if not isinstance(opt.lr, (int, float)) or opt.lr <= 0:
    raise ValueError(f"train.optimizer.lr must be a positive number, got {opt.lr!r}.")
  if not isinstance(opt.min_lr, (int, float)) or not 0 <= opt.min_lr <= opt.lr:
    raise ValueError(f"train.optimizer.min_lr must be in [0, lr = {opt.lr}], got {opt.min_lr!r}.")
  if train.checkpoint.every <= 0 or train.checkpoint.keep <= 0:
    raise ValueError("train.checkpoint.every and train.checkpoint.keep must be positive.")
  if train.data.format not in ("parquet", "arrayrecord"):
    raise ValueError(f"train.data.format must be 'parquet' or 'arrayrecord', got {train.data.format!r}.")
  return train


# What a resume must find unchanged: the fields that decide which batches, depths and updates the steps make.
# Everything else (steps, mesh, sharding rules, grad_accum_steps, remat_policy, loss_chunk, checkpoint.*, log.*,
# data worker/thread/prefetch counts, workdir, init_from, ...) may change between a run and its resume.
RESUME_FIXED = (
    "seed", "batch_size", "seq_len", "mean_recurrence", "mean_backprop_depth", "sampler_sigma", "depth_sampler",
    "init_scale", "optimizer.name", "optimizer.lr", "optimizer.min_lr", "optimizer.betas", "optimizer.eps",
    "optimizer.weight_decay", "optimizer.update_clipping", "optimizer.running_init", "optimizer.grad_clip",
    "optimizer.schedule", "optimizer.warmup_steps", "optimizer.cooldown_steps", "optimizer.skip_nonfinite",
    "data.format", "data.train_files", "data.column", "data.shuffle", "data.seed", "data.num_epochs",
)


def _get_dotted(tree: dict, key: str):
  for part in key.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


def check_resume_compatible(saved: dict, current: dict, where: str) -> None:
  """Raises ``ValueError`` naming the first field of ``RESUME_FIXED`` that differs between the training config a
  checkpoint was saved with and this run's (both as JSON dicts), unless ``checkpoint.allow_changes`` lists it."""
  allowed = set(_get_dotted(current, "checkpoint.allow_changes") or ())
  for key in RESUME_FIXED:
    before, now = _get_dotted(saved, key), _get_dotted(current, key)
    if before != now and key not in allowed:
      raise ValueError(f"{where} was trained with train.{key}={before!r}, this run has {now!r}; a resume keeps it "
                       f"(set it back, or accept the change with train.checkpoint.allow_changes=('{key}',), or "
                       "start a fresh run in another workdir).")


def load_experiment(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """Runs an experiment file's ``get_config()``; the result has ``model`` and ``train`` sections."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No experiment config file at {path}; see experiments/configs/ for examples.")
  spec = importlib.util.spec_from_file_location(f"huginn_experiment_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} must define get_config() returning a ConfigDict with 'model' and 'train'.")
  config = module.get_config()
  for section in ("model", "train"):
    if section not in config:
      raise ValueError(f"{path}: get_config() must return a ConfigDict with a {section!r} section.")
  return config


def apply_overrides(config: ml_collections.ConfigDict, assignments: list[str]) -> ml_collections.ConfigDict:
  """Applies ``dotted.key=value`` strings (values parsed as Python literals, else kept as strings)."""
  for item in assignments:
    if "=" not in item:
      raise ValueError(f"override {item!r} must look like section.field=value, e.g. train.steps=100.")
    key, raw = item.split("=", 1)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    *parents, field = key.split(".")
    target = config
    for part in parents:
      if part not in target:
        raise ValueError(f"override {item!r}: no section {part!r} in the config.")
      target = target[part]
    if field not in target:
      raise ValueError(f"override {item!r}: no field {field!r}; known: {sorted(target.keys())}.")
    value = value if not isinstance(value, list) else tuple(value)
    current = target[field]
    if isinstance(current, tuple) and isinstance(value, str):
      raise ValueError(f"override {item!r}: {key} is a tuple; write it as {key}=({value!r},).")
    try:
      target[field] = value
    except TypeError:
      expected = type(current).__name__ if current is not None else "value of its declared type"
      raise ValueError(f"override {item!r}: {key} must be a {expected}, got {value!r} (a {type(value).__name__})."
                       ) from None
  return config
