"""Cached decoding throughput of ``hj.generate``: tokens/s per batch size and KV-cache strategy at r iterations.

Random weights, greedy, zero initial state, no stop ids (every row decodes every token), one jitted program per
batch and cache. Decode tokens/s excludes the prefill: B * (N - 1) / (time of N new tokens - time of 1 new token),
the second time from the same program stopped after its first token by a stop id. Also
printed: the memory traffic a decode step needs at least (weights, the core's r times, plus every cached key and
value it attends to; ``huginn_jax.flops.decode_bytes_per_step``) as achieved bandwidth and its share of the
device's peak (the limit at batch 1), and MFU (the limit at large batch).

  python benchmarks/decode.py                                          # tiny shape, CPU
  python benchmarks/decode.py --shape huginn-0125 --batches 1 8 64 --caches full compress-s4   # on a GPU/TPU
"""

from __future__ import annotations

import jax
import numpy as np

import huginn_jax as hj
from huginn_jax import flops, perf
from huginn_jax.decoding.cache import cache_bytes

import _common


def main(argv=None) -> list[dict]:
  p = _common.parser(__doc__)
  p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
  p.add_argument("--caches", nargs="+", default=["full", "compress-s4"])
  p.add_argument("--num-steps", type=int, default=32)
  p.add_argument("--prompt-len", type=int, default=32)
  p.add_argument("--new-tokens", type=int, default=64)
  args = p.parse_args(argv)

  info = _common.header("decode")
  config = _common.model_config(args)
  params = hj.init(config, jax.random.key(0))
  n_new, r = args.new_tokens, args.num_steps
  context = args.prompt_len + n_new / 2  # positions a decoded token attends to, on average
  rows, profiled = [], None
  print(f"{'shape':>12} {'batch':>5} {'cache':>12} {'r':>3} {'decode tok/s':>12} {'e2e tok/s':>10} "
        f"{'ms/token':>9} {'GB/s':>7} {'BW use':>7} {'MFU':>6} {'cache GiB':>9} {'peak GiB':>8}", flush=True)
  for cache in args.caches:
    for batch in args.batches:
      prompt = np.random.default_rng(batch).integers(0, min(config.vocab_size, 65504), (batch, args.prompt_len))

      # One compiled program times both the whole generation and the prefill plus one token: stop ids are traced,
      # so the second run stops every row at the token the first run chose first (-1 never matches).
      def run(stop_ids, prompt=prompt.astype(np.int32), cache=cache):
        return lambda: hj.generate(params, prompt, config=config, max_new_tokens=n_new, num_steps=r,
                                   init_scale=0.0, cache=cache, stop_ids=stop_ids).tokens

      never = np.full((batch,), -1, np.int32)
      profiled = profiled or run(never)
      first_tokens = np.asarray(run(never)())[:, 0]
      full = perf.time_call(run(never), repeats=args.repeats).best
      first = perf.time_call(run(first_tokens), repeats=args.repeats).best
      step_s = max(full - first, 1e-9) / (n_new - 1)  # one decode step of the whole batch
      moved = flops.decode_bytes_per_step(config, num_steps=r, batch=batch, context_len=context)
      model_flops = batch * flops.decode_flops_per_token(config, context, r) / step_s
      row = {"work": "decode", "shape": config.name, "batch": batch, "cache": cache, "r": r,
             "prompt_len": args.prompt_len, "new_tokens": n_new, "dtype": args.dtype,
             "tokens_per_s": batch / step_s, "end_to_end_tokens_per_s": batch * n_new / full,
             "ms_per_step": step_s * 1e3, "gb_per_s": moved / step_s / 1e9,
             "bandwidth_use": _common.bandwidth_use(moved / step_s), "mfu": _common.mfu(model_flops),
             "cache_gib": cache_bytes(config, cache, r, batch, args.prompt_len + n_new) / _common.GIB,
             "peak_gib": _common.peak_gib()}
      rows.append(row)
      print(f"{config.name:>12} {batch:>5} {cache:>12} {r:>3} {row['tokens_per_s']:>12.1f} "
            f"{row['end_to_end_tokens_per_s']:>10.1f} {row['ms_per_step']:>9.2f} {row['gb_per_s']:>7.1f} "
            f"{_common.fmt(row['bandwidth_use'], '{:.1%}'):>7} {_common.fmt(row['mfu'], '{:.1%}'):>6} "
            f"{row['cache_gib']:>9.3f} {_common.fmt(row['peak_gib'], '{:.2f}'):>8}", flush=True)
      _common.emit(info, row, args.json)
  if rows:
    print("(peak GiB is the process's allocator peak so far: rows run in this order)")
  if profiled is not None:
    _common.profile(profiled, args.profile)
  return rows


if __name__ == "__main__":
  main()
