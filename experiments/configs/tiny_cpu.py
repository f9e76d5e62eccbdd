"""Tiny Huginn (d=64, 4 heads) trained on CPU in minutes.

  huginn-jax prepare-data corpus.jsonl --tokenizer tokenizer.json --out outputs/data/tiny --seq-len 32
  huginn-jax train --config experiments/configs/tiny_cpu.py
"""

import ml_collections

import huginn_jax as hj
from huginn_jax.training.config import get_train_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = hj.get_config("tiny")
  config.train = get_train_config("tiny_cpu")
  config.train.data.train_files = ("outputs/data/tiny",)
  config.train.workdir = "outputs/tiny_cpu"
  return config
