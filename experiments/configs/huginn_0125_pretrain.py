"""The original's pretraining recipe for Huginn-0125 at full scale (4096 sequences of 4096 tokens per step,
r=32, k0=8, atan2 Adam with lr 4e-5, 4096 warmup and cooldown steps), on a multi-host mesh.

  huginn-jax train --config experiments/configs/huginn_0125_pretrain.py --set train.data.train_files="('gs://...',)"
"""

import ml_collections

import huginn_jax as hj
from huginn_jax.training.config import get_train_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = hj.get_config("huginn-0125", param_dtype="float32", compute_dtype="bfloat16")
  config.train = get_train_config("huginn_0125_pretrain")
  config.train.data.train_files = ("outputs/data/pretrain",)
  config.train.sharding_rules = (("heads", None),)
  config.train.mesh.data = -1
  config.train.mesh.fsdp = 8
  config.train.mesh.tensor = 1
  config.train.grad_accum_steps = 16
  config.train.workdir = "outputs/huginn_0125_pretrain"
  return config
