"""Per-device memory of a Huginn training step on a TPU slice, computed on this host before renting the slice.

Compiles the real train step (``huginn_jax.training.step``: truncated backprop with n + k iterations, the
original's atan2-Adam chain with fp32 master params and moments, the default sharding rules, the old state donated)
for the given slice and mesh, and prints ``huginn_jax.aot``'s report. With libtpu installed
(``pip install 'jax[tpu]'``; no TPU needed) it compiles with the TPU compiler for the real slice, Pallas splash
attention included; with ``--cpu`` it uses simulated CPU devices instead (whose compiler keeps far more
temporaries alive than the TPU's: an upper bound). A mesh axis that does not divide a sharded dimension is an
error naming both.

  python tpu_setup/memory_check.py --accelerator-type v5p-128 --mesh 2,32,1
"""

from __future__ import annotations

import argparse
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
  from huginn_jax import sharding as sharding_lib
  from huginn_jax.training import config as train_config_lib
  from huginn_jax.training import optimizer as optimizer_lib
  from huginn_jax.training import state as state_lib
  from huginn_jax.training import step as step_lib

  axes = sharding_lib.MESH_AXES
  if args.cpu:
    mesh = jax.make_mesh(shape, axes, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  else:
    mesh = aot.tpu_mesh(args.accelerator_type, shape, axes)
  config = hj.get_config(args.config, param_dtype="float32", compute_dtype="bfloat16", attention_impl=args.attention)
  n, k = (int(s) for s in args.steps.split(","))
  train = train_config_lib.get_train_config("huginn_0125_pretrain", batch_size=mesh.size * args.micro_batch,
                                            seq_len=args.seq_len)
  train.mesh.data, train.mesh.fsdp, train.mesh.tensor = shape
  train.depth_sampler = "fixed"  # memory does not depend on the draw; size it for n + k iterations
  train.mean_recurrence, train.mean_backprop_depth = n + k, k
  train_config_lib.validate(train, config)
  rules = sharding_lib.rules_table(train.sharding_rules)
  param_shardings = sharding_lib.param_shardings(config, mesh, rules)
  tx, schedule = optimizer_lib.make_optimizer(train, train.steps)
  shardings = state_lib.state_shardings(config, tx, mesh, param_shardings)
  state = state_lib.with_shardings(state_lib.abstract_state(config, tx), shardings)
  batch_shape = (1, train.batch_size, args.seq_len)
  batch_sharding = step_lib.batch_sharding(mesh, rules, batch_shape)
  batch = {name: jax.ShapeDtypeStruct(batch_shape, jnp.int32, sharding=batch_sharding) for name in ("inputs", "labels")}
  step = step_lib.make_train_step(config, train, tx, schedule, mesh=mesh, rules=rules)

  start = time.time()
  target = "simulated CPU devices" if args.cpu else args.accelerator_type
  what = (f"{args.config} on {target}, mesh (data, fsdp, tensor) = {shape}, {args.micro_batch} x {args.seq_len} "
          f"tokens per device, n={n} k={k}, attention={args.attention}")
  try:
    with jax.set_mesh(mesh):
      report = aot.memory_analysis(lambda state, batch: step(state, batch), state, batch, donate_argnums=(0,),
                                   names=["train state (fp32 params + atan2-Adam moments)", "batch"])
  except Exception as error:  # the TPU compiler refuses a step that does not fit in HBM
    message = out_of_memory_message(error, what)
    if message is None:
      raise
    sys.exit(message)
  print(f"{what} (compiled in {time.time() - start:.0f} s)")
  print(report)


def out_of_memory_message(error: Exception, what: str) -> str | None:
  """A report of a step that does not fit, with what to change; None when ``error`` is not about memory."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
    return None
  detail = next((line.strip() for line in text.splitlines() if "memory" in line.lower()), text.strip())
  return (f"{what}: does NOT fit on one device.\n  compiler: {detail}\n  fix: fewer sequences per device "
          "(--micro-batch, then gradient accumulation), a larger fsdp axis, shorter sequences, or a slice with more "
          "memory per chip.")


if __name__ == "__main__":
  main()
