"""What huge pages for host buffers buy on CPU: the same jitted work in child processes started without and with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, alternating, each reporting milliseconds and page faults per call.

XLA CPU allocates each call's temporaries and outputs afresh and frees them afterwards; above glibc's 32 MiB mmap
ceiling that is a fresh mapping per call, page-faulted 4 KiB at a time (huginn_jax/host_malloc.py). The variable is
read at process start, hence the children. Work (``--work``):

- ``loss-grad``: ``jit(value_and_grad(hj.loss))`` at compare_original.py's issue-15 shape (d=512, 8 heads, MLP
  1536, vocab 32768, 2/4/2 layers, 256 tokens, n=6 + k=2, float32); no torch needed;
- ``parity-step``: the main job's recurrent train step (experiments/test_time_scaling.py defaults), vmapped over
  ``--seeds`` seeds as one of its seed groups runs.

  python benchmarks/host_malloc.py                        # both, 2 rounds, about 2 minutes on 2 cores
  python benchmarks/host_malloc.py --work loss-grad --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

WORKS = ("loss-grad", "parity-step")
TUNABLE = "glibc.malloc.hugetlb"
SETTINGS = {"4 KiB pages": "", "huge pages": f"{TUNABLE}=1"}  # what each child is started with
CHILD_TIMEOUT_S = 1800


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--work", nargs="+", default=list(WORKS), choices=WORKS)
  p.add_argument("--rounds", type=positive_int, default=2, help="child processes per setting, alternating (default 2)")
  p.add_argument("--calls", type=positive_int, default=8, help="timed calls per child after one warm-up (default 8)")
  p.add_argument("--seeds", type=positive_int, default=3, help="parity-step: seeds vmapped in one program (default 3)")
  p.add_argument("--json", default=None, help="append one JSON line per (work, setting) to this file")
  p.add_argument("--child", default=None, choices=WORKS, help=argparse.SUPPRESS)
  return p


def loss_grad_call():
  """A no-argument function running one loss + gradients call of issue 15's shape (``compare_original.SHAPES``)."""
  import jax
  import huginn_jax as hj
  from compare_original import SHAPES
  shape = SHAPES["issue15"]
  prelude, core, coda = shape["layers"]
  config = hj.get_config("tiny", vocab_size=shape["vocab"], d_model=shape["d_model"], n_heads=shape["heads"],
                         head_dim=shape["d_model"] // shape["heads"], intermediate_size=shape["mlp"],
                         n_layers_prelude=prelude, n_layers_core=core, n_layers_coda=coda,
                         max_seq_len=max(shape["train_len"], 512), compute_dtype="float32", param_dtype="float32")
  params = hj.init(config, jax.random.key(0))
  rows = np.random.default_rng(0).integers(0, config.vocab_size, (1, shape["train_len"] + 1), np.int32)
  inputs, labels = jax.device_put(rows[:, :-1]), jax.device_put(rows[:, 1:])
  step = jax.jit(jax.value_and_grad(lambda p, x, y: hj.loss(p, x, y, config=config, depth=shape["depth"],
                                                             init_scale=0.0)))
  return lambda: step(params, inputs, labels)


def parity_step_call(num_seeds: int):
  """A no-argument function running one step of the main job's recurrent model, ``num_seeds`` seeds vmapped."""
  import jax
  import jax.numpy as jnp
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments"))
  import test_time_scaling as job
  from huginn_jax.training import optimizer as optimizer_lib, seeds as seeds_lib, step as step_lib
  args = job.make_parser().parse_args(["--seeds", *map(str, range(num_seeds))])
  model_config = job.model_config(args)
  train_config = job.train_config(args, recurrent=True)
  optimizer, schedule = optimizer_lib.make_optimizer(train_config, train_config.steps)
  step = seeds_lib.seeds_step(model_config, train_config, optimizer, schedule)
  holder = {"state": seeds_lib.init_states(model_config, optimizer, range(num_seeds))}
  rows = np.random.default_rng(0).integers(0, 5, (num_seeds, 1, args.batch_size, args.bits + 1), np.int32)
  batch = {"inputs": jnp.asarray(rows[..., :-1]), "labels": jnp.asarray(rows[..., 1:])}
  ids = jnp.arange(num_seeds, dtype=jnp.int32)
  depth = step_lib.depth_schedule(train_config, model_config, 0, 1)[0]

  def call():
    holder["state"], metrics = step(holder["state"], batch, ids, depth)
    return metrics
  return call


def child(work: str, calls: int, seeds: int) -> dict:
  """Warm-up call, then ``calls`` timed ones; the best and median time and the page faults per call."""
  import jax
  call = loss_grad_call() if work == "loss-grad" else parity_step_call(seeds)
  jax.block_until_ready(call())
  times, faults, system = [], [], []
  for _ in range(calls):
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults.append(after.ru_minflt - before.ru_minflt)
    system.append(after.ru_stime - before.ru_stime)
  from huginn_jax import host_malloc
  return {"host_malloc": host_malloc.describe(), "best_ms": 1e3 * min(times),
          "median_ms": 1e3 * float(np.median(times)), "faults_per_call": float(np.median(faults)),
          "system_ms_per_call": 1e3 * float(np.median(system))}


def child_env(tunable: str) -> dict[str, str]:
  """This environment with the caller's other glibc tunables kept, glibc.malloc.hugetlb replaced by ``tunable``
  (dropped when empty)."""
  env = dict(os.environ)
  kept = [item for item in env.pop("GLIBC_TUNABLES", "").split(":") if item and not item.startswith(TUNABLE + "=")]
  if tunable:
    kept.append(tunable)
  if kept:
    env["GLIBC_TUNABLES"] = ":".join(kept)
  return env


def run_child(work: str, tunable: str, args) -> dict:
  env = child_env(tunable)
  cmd = [sys.executable, os.path.abspath(__file__), "--child", work, "--calls", str(args.calls),
         "--seeds", str(args.seeds)]
  what = f"the {work} child ({tunable or 'without ' + TUNABLE})"
  try:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    raise SystemExit(f"host_malloc.py: {what} ran over {CHILD_TIMEOUT_S} s; fewer --calls or --seeds") from None
  if done.returncode != 0:
    raise SystemExit(f"host_malloc.py: {what} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
  try:
    return json.loads(done.stdout.strip().splitlines()[-1])
  except (IndexError, json.JSONDecodeError):
    raise SystemExit(f"host_malloc.py: {what} printed no result line; its output ends:\n{done.stdout[-2000:]}"
                     f"{done.stderr[-2000:]}") from None


def main(argv=None) -> list[dict]:
  args = make_parser().parse_args(argv)
  if args.child:
    print(json.dumps(child(args.child, args.calls, args.seeds)), flush=True)
    return []
  import jax
  from huginn_jax import host_malloc
  glibc = host_malloc.glibc_version()
  mode = host_malloc.thp_mode()
  print(f"host_malloc benchmark, jax {jax.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs; "
        f"kernel THP {mode or 'absent'}, glibc {'.'.join(map(str, glibc)) if glibc else 'none'}; {args.rounds} rounds "
        f"alternating, {args.calls} calls per child", flush=True)
  if mode != "madvise" or glibc is None or glibc < host_malloc.MIN_GLIBC:
    print("warning: the tunable decides the page size only with kernel THP madvise and glibc >= 2.35; here the two "
          "children get the same pages, whatever their labels say (each child's own line follows)", flush=True)
  rows = []
  for work in args.work:
    per_setting = {name: [] for name in SETTINGS}
    for r in range(args.rounds):
      for name, tunables in SETTINGS.items():
        result = run_child(work, tunables, args)
        per_setting[name].append(result)
        if r == 0:
          print(f"  {name} child: {result['host_malloc']}", flush=True)
        print(f"  {work}, round {r + 1}, {name}: best {result['best_ms']:.0f} ms, median {result['median_ms']:.0f} "
              f"ms, {result['faults_per_call']:,.0f} page faults and {result['system_ms_per_call']:.0f} ms of kernel "
              f"time per call", flush=True)
    for name, results in per_setting.items():
      rows.append({"work": work, "setting": name, "best_ms": min(x["best_ms"] for x in results),
                   "median_ms": float(np.median([x["median_ms"] for x in results])),
                   "faults_per_call": float(np.median([x["faults_per_call"] for x in results])),
                   "system_ms_per_call": float(np.median([x["system_ms_per_call"] for x in results]))})
  print("\n| work | host pages | best ms | median ms | page faults per call | kernel ms per call |")
  print("|---|---|---|---|---|---|")
  for row in rows:
    print(f"| {row['work']} | {row['setting']} | {row['best_ms']:.0f} | {row['median_ms']:.0f} | "
          f"{row['faults_per_call']:,.0f} | {row['system_ms_per_call']:.0f} |")
  for work in args.work:
    small, huge = (next(r for r in rows if r["work"] == work and r["setting"] == s) for s in SETTINGS)
    print(f"{work}: huge pages {small['median_ms'] / huge['median_ms']:.2f}x the speed of 4 KiB pages (median)")
  if args.json:
    with open(args.json, "a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
  return rows


if __name__ == "__main__":
  main()
