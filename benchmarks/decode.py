"""Decoding throughput of ``hj.generate``: tokens/s at batch 1 and 8, r=32, for the tiny and the full shape.

Random weights (throughput does not depend on their values), greedy, zero initial state, no stop ids (every row
decodes all tokens). Each configuration is compiled first; the timed runs are whole generations. Decode tokens/s
excludes the prefill: it is B * (N - 1) / (time of N new tokens - time of 1 new token).

  python benchmarks/decode.py                       # tiny shape (runs on CPU)
  python benchmarks/decode.py --shapes tiny huginn-0125 --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import huginn_jax as hj
from huginn_jax.decoding.cache import memory_table


def _time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile + warm up
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shapes", nargs="+", default=["tiny"], help="config presets (huginn-0125 needs an accelerator)")
  p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
  p.add_argument("--num-steps", type=int, default=32)
  p.add_argument("--prompt-len", type=int, default=32)
  p.add_argument("--new-tokens", type=int, default=64)
  p.add_argument("--cache", default="full")
  p.add_argument("--dtype", default=None, help="param and compute dtype (default: the preset's)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--force", action="store_true", help="run the full shape on CPU anyway")
  args = p.parse_args(argv)

  backend = jax.default_backend()
  print(f"backend: {backend} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
  for shape in args.shapes:
    overrides = {} if args.dtype is None else dict(param_dtype=args.dtype, compute_dtype=args.dtype)
    config = hj.get_config(shape, **overrides)
    if hj.num_params(config) > 1e9 and backend == "cpu" and not args.force:
      print(f"skipping {shape} ({hj.num_params(config) / 1e9:.1f}B params) on CPU; run on a GPU or pass --force")
      continue
    params = hj.init(config, jax.random.key(0))
    print(memory_table(config, args.num_steps, batch=1, max_len=args.prompt_len + args.new_tokens,
                       strategies=(args.cache,)))
    print(f"{'shape':>12} {'batch':>5} {'r':>3} {'prompt':>6} {'new':>4} {'end-to-end tok/s':>17} "
          f"{'decode tok/s':>13} {'ms/step':>8}")
    for batch in args.batches:
      rng = np.random.default_rng(batch)
      prompt = rng.integers(0, min(config.vocab_size, 65504), (batch, args.prompt_len)).astype(np.int32)

      def run(new_tokens):
        return lambda: hj.generate(params, prompt, config=config, max_new_tokens=new_tokens, num_steps=args.num_steps,
                                   init_scale=0.0, cache=args.cache, stop_ids=()).tokens

      full = _time(run(args.new_tokens), args.repeats)
      prefill = _time(run(1), args.repeats)
      decode = batch * (args.new_tokens - 1) / max(full - prefill, 1e-9)
      print(f"{shape:>12} {batch:>5} {args.num_steps:>3} {args.prompt_len:>6} {args.new_tokens:>4} "
            f"{batch * args.new_tokens / full:>17.1f} {decode:>13.1f} {1e3 * batch / decode:>8.2f}")


if __name__ == "__main__":
  main()
