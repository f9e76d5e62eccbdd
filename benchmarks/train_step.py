"""Train-step throughput: the real step of ``huginn-jax train`` (loss with truncated backprop, gradients, atan2-Adam
update) with the optimizer state in device memory, at a fixed depth of n no-gradient + k gradient iterations.

Float32 parameters and optimizer moments, compute in ``--dtype``, each gradient iteration rematerialized with
``--remat``, the old state donated. Prints what XLA planned (state, temporaries), tokens/s, MFU (model FLOPs:
3x forward for the parts with gradient, 1x for the n iterations without; remat recomputation not counted) and
the allocator's peak memory.

  python benchmarks/train_step.py                                    # tiny shape, CPU
  python benchmarks/train_step.py --shape huginn-0125 --seq-len 4096 --batch 1 --num-steps 32 --backprop 8  # GPU
"""

from __future__ import annotations

import jax
import numpy as np

from huginn_jax import flops, perf
from huginn_jax.model import REMAT_POLICIES
from huginn_jax.training import config as train_config_lib
from huginn_jax.training import optimizer as optimizer_lib
from huginn_jax.training import state as state_lib
from huginn_jax.training import step as step_lib

import _common


def main(argv=None) -> list[dict]:
  p = _common.parser(__doc__)
  p.add_argument("--seq-len", type=int, default=4096, help="tokens per sequence (capped at the config's max_seq_len)")
  p.add_argument("--batch", type=int, default=1, help="sequences per step")
  p.add_argument("--num-steps", type=int, default=32, help="total core iterations r = n + k")
  p.add_argument("--backprop", type=int, default=8, help="k: the last iterations, with gradient")
  p.add_argument("--remat", default="nothing_saveable", choices=sorted(REMAT_POLICIES))
  p.add_argument("--optimizer", default="adam_atan2", choices=("adam_atan2", "adamw"))
  p.add_argument("--loss-chunk", type=int, default=1024, help="positions per cross-entropy chunk (0: all at once)")
  args = p.parse_args(argv)
  if not 0 < args.backprop <= args.num_steps:
    p.error(f"--backprop must be in 1..--num-steps ({args.num_steps}), got {args.backprop}.")

  info = _common.header("train_step")
  model_config = _common.model_config(args, param_dtype="float32")
  seq = min(args.seq_len, model_config.max_seq_len)
  train_config = train_config_lib.get_train_config(
      "base", batch_size=args.batch, seq_len=seq, mean_recurrence=args.num_steps, mean_backprop_depth=args.backprop,
      depth_sampler="fixed", remat_policy=args.remat, loss_chunk=args.loss_chunk)
  train_config.optimizer.name = args.optimizer
  optimizer, schedule = optimizer_lib.make_optimizer(train_config, total_steps=1000)
  state = state_lib.init_state(model_config, optimizer, None, key=jax.random.key(0))
  step = step_lib.jit_train_step(step_lib.make_train_step(model_config, train_config, optimizer, schedule))
  rows = np.random.default_rng(0).integers(0, model_config.vocab_size, (1, args.batch, seq + 1), np.int32)
  batch = {"inputs": jax.device_put(rows[..., :-1]), "labels": jax.device_put(rows[..., 1:])}

  planned = perf.compiled_memory(step.lower(state, batch).compile())
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = step(holder["state"], batch)
    return metrics["loss"]

  timing = perf.time_call(one_step, repeats=args.repeats)
  n, k = args.num_steps - args.backprop, args.backprop
  tokens_per_s = args.batch * seq / timing.best
  model_flops = tokens_per_s * flops.train_flops_per_token(model_config, seq, n, k)
  row = {"work": "train_step", "shape": model_config.name, "batch": args.batch, "seq_len": seq, "n": n, "k": k,
         "remat": args.remat, "loss_chunk": args.loss_chunk, "optimizer": args.optimizer, "attention": args.attention,
         "dtype": args.dtype,
         "seconds": timing.best, "tokens_per_s": tokens_per_s, "tflops": model_flops / 1e12,
         "mfu": _common.mfu(model_flops), "state_gib": state_bytes / _common.GIB,
         "planned_temp_gib": None if planned is None else planned["temp"] / _common.GIB,
         "planned_total_gib": None if planned is None else planned["total"] / _common.GIB,
         "peak_gib": _common.peak_gib()}
  print(f"{model_config.name}: batch {args.batch} x {seq} tokens, n={n} + k={k}, remat {args.remat}: "
        f"{timing.best * 1e3:.0f} ms/step, {tokens_per_s:,.0f} tok/s, {row['tflops']:.1f} TFLOP/s, "
        f"MFU {_common.fmt(row['mfu'], '{:.1%}')}")
  print(f"  memory: params + optimizer state {row['state_gib']:.2f} GiB; XLA planned temporaries "
        f"{_common.fmt(row['planned_temp_gib'], '{:.2f} GiB')}, "
        f"total {_common.fmt(row['planned_total_gib'], '{:.2f} GiB')}; "
        f"allocator peak {_common.fmt(row['peak_gib'], '{:.2f} GiB')}")
  _common.emit(info, row, args.json)
  _common.profile(one_step, args.profile)
  return [row]


if __name__ == "__main__":
  main()
