"""Fine-tuning the published Huginn-0125 with the original's optimizer, bf16 compute over fp32 master weights.

  huginn-jax convert <hf dir of tomg-group-umd/huginn-0125> outputs/huginn-0125-orbax
  huginn-jax prepare-data <text or jsonl> --tokenizer <hf dir>/tokenizer.json --out outputs/data/finetune
  huginn-jax train --config experiments/configs/huginn_0125_finetune.py

The 55 attention heads divide only by 5, 11 and 55, so the tensor axis shards the MLP (17920) and the
vocabulary while heads stay whole; FSDP shards the model dimension over all devices.
"""

import ml_collections

import huginn_jax as hj
from huginn_jax.training.config import get_train_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = hj.get_config("huginn-0125", param_dtype="float32", compute_dtype="bfloat16")
  config.train = get_train_config("huginn_0125_finetune")
  config.train.init_from = "outputs/huginn-0125-orbax"
  config.train.data.train_files = ("outputs/data/finetune",)
  config.train.sharding_rules = (("heads", None),)
  config.train.mesh.data = 1
  config.train.mesh.fsdp = -1
  config.train.mesh.tensor = 1
  config.train.workdir = "outputs/huginn_0125_finetune"
  return config
