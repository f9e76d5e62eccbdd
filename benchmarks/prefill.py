"""Prefill throughput: one forward pass over a long prompt at r core iterations (logits of every position).

Random weights (speed does not depend on their values), a zero initial state. Prints tokens/s, the model FLOP/s
and MFU against the device's bf16 peak, and the device's peak memory. ``--breakdown`` also times r=0, which splits
the time into the part outside the recurrence and the cost of one core iteration.

  python benchmarks/prefill.py                                              # tiny shape, CPU
  python benchmarks/prefill.py --shape huginn-0125 --seq-len 4096 --num-steps 32 --breakdown   # on a GPU/TPU
"""

from __future__ import annotations

import functools

import jax
import numpy as np

import huginn_jax as hj
from huginn_jax import flops, perf

import _common


def main(argv=None) -> list[dict]:
  p = _common.parser(__doc__)
  p.add_argument("--seq-len", type=int, default=4096, help="prompt length (capped at the config's max_seq_len)")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--num-steps", type=int, default=32)
  p.add_argument("--breakdown", action="store_true", help="also time r=0 (prelude, coda and head only)")
  args = p.parse_args(argv)

  info = _common.header("prefill")
  config = _common.model_config(args)
  seq = min(args.seq_len, config.max_seq_len)
  params = hj.init(config, jax.random.key(0))
  tokens = jax.device_put(np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, seq), np.int32))

  @functools.partial(jax.jit, static_argnames="num_steps")
  def prefill(params, tokens, num_steps):
    return hj.forward(params, tokens, config=config, num_steps=num_steps, init_scale=0.0).logits

  run = lambda r: (lambda: prefill(params, tokens, r))  # noqa: E731
  timing = perf.time_call(run(args.num_steps), repeats=args.repeats)
  tokens_per_s = args.batch * seq / timing.best
  model_flops = tokens_per_s * flops.forward_flops_per_token(config, seq, args.num_steps)
  row = {"work": "prefill", "shape": config.name, "batch": args.batch, "seq_len": seq, "r": args.num_steps,
         "attention": args.attention, "dtype": args.dtype, "seconds": timing.best, "tokens_per_s": tokens_per_s,
         "tflops": model_flops / 1e12, "mfu": _common.mfu(model_flops), "peak_gib": _common.peak_gib()}
  print(f"{config.name}: batch {args.batch} x {seq} tokens, r={args.num_steps}: {timing.best * 1e3:.1f} ms, "
        f"{tokens_per_s:,.0f} tok/s, {row['tflops']:.1f} TFLOP/s, MFU {_common.fmt(row['mfu'], '{:.1%}')}, "
        f"peak memory {_common.fmt(row['peak_gib'], '{:.2f} GiB')}")
  if args.breakdown and args.num_steps > 0:
    outside = perf.time_call(run(0), repeats=args.repeats).best
    per_step = (timing.best - outside) / args.num_steps
    step_flops = args.batch * seq * flops.core_step_flops(config, seq / 2)
    row.update(outside_ms=outside * 1e3, core_step_ms=per_step * 1e3,
               core_step_mfu=_common.mfu(step_flops / per_step) if per_step > 0 else None)
    print(f"  breakdown: outside the recurrence {outside * 1e3:.1f} ms; one core iteration {per_step * 1e3:.2f} ms "
          f"(MFU {_common.fmt(row['core_step_mfu'], '{:.1%}')})")
  _common.emit(info, row, args.json)
  _common.profile(run(args.num_steps), args.profile)
  return [row]


if __name__ == "__main__":
  main()
