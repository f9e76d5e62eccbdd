"""Loads the toy tasks' JSONL files from this directory (so the tasks work from any working directory, offline)."""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _rows(name: str) -> list[dict]:
  with open(os.path.join(HERE, name)) as f:
    return [json.loads(line) for line in f if line.strip()]


def _splits(name: str, **_) -> dict:
  """{"test": ..., "train": ...}: the harness passes --model_args and metadata as keyword arguments (ignored)."""
  import datasets
  rows = _rows(name)
  return {"test": datasets.Dataset.from_list(rows), "train": datasets.Dataset.from_list(rows)}


def choice(**kwargs) -> dict:
  return _splits("choice.jsonl", **kwargs)


def rolling(**kwargs) -> dict:
  return _splits("rolling.jsonl", **kwargs)


def generate(**kwargs) -> dict:
  return _splits("generate.jsonl", **kwargs)
