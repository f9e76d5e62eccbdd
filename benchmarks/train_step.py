"""Throughput of the train step on this machine's devices: prints tokens/s and MFU per logged window.

  python benchmarks/train_step.py --model small --seq-len 1024 --batch 8 --steps 30 --recurrence 8 --k0 4
"""

import argparse
import tempfile

import numpy as np

import huginn_jax as hj
from huginn_jax.training import get_train_config, train


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="tiny")
  parser.add_argument("--dtype", default="bfloat16", help="compute dtype (params stay float32)")
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--accum", type=int, default=1)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--recurrence", type=int, default=None)
  parser.add_argument("--k0", type=int, default=None)
  parser.add_argument("--remat", default="nothing_saveable")
  parser.add_argument("--mesh", default="data=-1", help="e.g. data=1,fsdp=-1,tensor=1")
  parser.add_argument("--peak-flops", type=float, default=None, help="per device, for MFU on unknown devices")
  args = parser.parse_args()

  model = hj.get_config(args.model, param_dtype="float32", compute_dtype=args.dtype, remat_policy=args.remat)
  config = get_train_config("base", steps=args.steps, batch_size=args.batch, grad_accum_steps=args.accum,
                            seq_len=args.seq_len, mean_recurrence=args.recurrence, mean_backprop_depth=args.k0,
                            remat_policy=args.remat)
  config.optimizer.warmup_steps = config.optimizer.cooldown_steps = 0
  config.mesh.update({k: int(v) for k, v in (kv.split("=") for kv in args.mesh.split(","))})
  if "data" not in args.mesh:
    config.mesh.data = 1
  config.log.every = 10
  config.log.tensorboard = False
  config.log.peak_flops_per_device = args.peak_flops
  config.checkpoint.every = 10 ** 9
  rows = np.random.default_rng(0).integers(0, model.vocab_size, (args.batch * 4, args.seq_len + 1))
  with tempfile.TemporaryDirectory() as workdir:
    result = train(config, model, source=rows, workdir=workdir)
  for h in result.history[1:]:  # the first window includes the warm-up of the compiled step
    mfu = f"{h['mfu']:.1%}" if "mfu" in h else "n/a"
    print(f"step {h['step']}: {h['tokens_per_s']:,.0f} tokens/s, MFU {mfu}")


if __name__ == "__main__":
  main()
