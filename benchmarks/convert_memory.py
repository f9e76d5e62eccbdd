"""Peak host memory of ``huginn-jax convert`` on a checkpoint of the full huginn-0125 shape (random bf16 tensors).

Writes a sharded HF directory of random bf16 tensors (7.1 GB) in the original's names and layout, converts it in a
child process, and prints the child's peak resident memory (the issue's bar: within 24 GB of RAM).

  python benchmarks/convert_memory.py --workdir /tmp/huginn-convert-check [--config huginn-0125] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import ml_dtypes
import numpy as np
from tqdm import tqdm

import huginn_jax as hj
from huginn_jax.checkpoint import hf, safetensors_io


def write_random_hf(path: str, config, shard_bytes: int = 5 << 30) -> int:
  """Streams random bf16 tensors of the config's shape into sharded safetensors with an index; returns bytes."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hj.to_hf_config(config), f)
  rng = np.random.default_rng(0)
  bf16 = np.dtype(ml_dtypes.bfloat16)
  shards, current, size = [], {}, 0
  for rule in hf.rules(config):
    nbytes = int(np.prod(rule.hf_shape)) * 2
    if current and size + nbytes > shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[rule.hf_name] = (rule.hf_shape, bf16)
    size += nbytes
  shards.append(current)
  weight_map, total = {}, 0
  bar = tqdm(total=sum(len(s) for s in shards), desc="writing random checkpoint", unit="tensor")
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"

    def tensors(shard=shard):
      for key, (shape, _) in shard.items():
        bar.update()
        yield key, (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(bf16)

    safetensors_io.write(os.path.join(path, name), tensors(), shapes=shard)
    weight_map.update({k: name for k in shard})
    total += sum(int(np.prod(s)) * 2 for s, _ in shard.values())
  bar.close()
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
  return total


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="/tmp/huginn-convert-check")
  parser.add_argument("--config", default="huginn-0125")
  parser.add_argument("--keep", action="store_true", help="keep the generated and converted checkpoints")
  args = parser.parse_args()
  config = hj.get_config(args.config)
  src, dst = os.path.join(args.workdir, "hf"), os.path.join(args.workdir, "orbax")
  shutil.rmtree(args.workdir, ignore_errors=True)
  start = time.perf_counter()
  nbytes = write_random_hf(src, config)
  print(f"random {args.config} checkpoint: {nbytes / 1e9:.2f} GB in {time.perf_counter() - start:.0f}s")
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "huginn_jax.cli", "convert", src, dst], check=True)
  elapsed = time.perf_counter() - start
  peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  print(f"convert: {elapsed:.0f}s, peak resident memory of the converting process {peak_kib / 2**20:.2f} GiB "
        f"(checkpoint {nbytes / 2**30:.2f} GiB)")
  cfg, params = hj.load(dst)
  n = sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(params))
  assert n == hj.num_params(config), (n, hj.num_params(config))
  print(f"reloaded {n:,} params as {cfg.param_dtype}")
  if not args.keep:
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
  main()
