"""Per-device memory of a Huginn training step on a TPU slice, computed on this host before renting the slice.

Compiles the truncated-backprop loss gradient plus an Adam-shaped update (fp32 master params and two fp32
moments, donated) for the given slice and mesh, and prints ``huginn_jax.aot``'s report. With libtpu installed
(``pip install 'jax[tpu]'``; no TPU needed) it compiles with the TPU compiler for the real slice, Pallas splash
attention included; with ``--cpu`` it uses simulated CPU devices instead (whose compiler keeps far more
temporaries alive than the TPU's: an upper bound). Params are split over ``fsdp`` on the first dimension that axis
divides, the batch over ``data`` x ``fsdp``. This is an interim stand-in: the train step's own AOT check, with the
real optimizer and sharding rules, supersedes it.

  python tpu_setup/memory_check.py --accelerator-type v5p-128 --mesh 2,32,1
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--accelerator-type", default="v5p-128", help="TPU slice, e.g. v4-32, v5litepod-64, v5p-128, v6e-256")
  p.add_argument("--mesh", default="2,32,1", help="data,fsdp,tensor sizes; their product is the device count")
  p.add_argument("--micro-batch", type=int, default=1, help="sequences per device in one step")
  p.add_argument("--seq-len", type=int, default=4096)
  p.add_argument("--steps", default="24,8", help="n,k: recurrences without and with gradient")
  p.add_argument("--config", default="huginn-0125", help="model preset")
  p.add_argument("--attention", default="pallas", choices=("xla", "pallas"))
  p.add_argument("--cpu", action="store_true", help="compile for simulated CPU devices instead of the TPU slice")
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  shape = tuple(int(n) for n in args.mesh.split(","))
  if len(shape) != 3:
    sys.exit(f"--mesh takes three sizes data,fsdp,tensor, got {args.mesh!r}")
  if args.cpu:  # must happen before jax starts
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={math.prod(shape)}"
  import jax
  import jax.numpy as jnp

  import huginn_jax as hj
  from huginn_jax import aot

  axes = ("data", "fsdp", "tensor")
  if args.cpu:
    mesh = jax.make_mesh(shape, axes, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  else:
    mesh = aot.tpu_mesh(args.accelerator_type, shape, axes)
  config = hj.get_config(args.config, param_dtype="float32", compute_dtype="bfloat16", attention_impl=args.attention)
  P, fsdp = jax.sharding.PartitionSpec, mesh.shape["fsdp"]

  def sharding(dims):
    dim = next((i for i, n in enumerate(dims) if n % fsdp == 0), None)
    return jax.sharding.NamedSharding(mesh, P() if dim is None else P(*([None] * dim + ["fsdp"])))

  params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=sharding(p.shape)),
                        hj.abstract_params(config))
  moments = jax.tree.map(lambda p: (p, p), params)
  batch = jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), None))
  tokens = jax.ShapeDtypeStruct((mesh.size * args.micro_batch, args.seq_len), jnp.int32, sharding=batch)
  n, k = (int(s) for s in args.steps.split(","))
  loss = functools.partial(hj.loss, config=config, num_steps=(n, k), init_scale=0.0)
  is_pair = lambda x: isinstance(x, tuple)  # noqa: E731

  def step(params, moments, tokens, labels):
    grads = jax.grad(loss)(params, tokens, labels)
    moments = jax.tree.map(lambda m, g: (0.9 * m[0] + 0.1 * g, 0.95 * m[1] + 0.05 * g * g), moments, grads,
                           is_leaf=is_pair)
    update = lambda p, m: p - 4e-5 * m[0] / (jnp.sqrt(m[1]) + 1e-8)  # noqa: E731
    return jax.tree.map(update, params, moments, is_leaf=is_pair), moments

  start = time.time()
  with jax.set_mesh(mesh):
    report = aot.memory_analysis(step, params, moments, tokens, tokens, donate_argnums=(0, 1),
                                 names=["params (fp32)", "adam moments (fp32)", "tokens", "labels"])
  target = "simulated CPU devices" if args.cpu else args.accelerator_type
  print(f"{args.config} on {target}, mesh (data, fsdp, tensor) = {shape}, {args.micro_batch} x {args.seq_len} tokens "
        f"per device, n={n} k={k}, attention={args.attention} (compiled in {time.time() - start:.0f} s)")
  print(report)


if __name__ == "__main__":
  main()
