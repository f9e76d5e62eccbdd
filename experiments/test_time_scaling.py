"""The main job: test-time compute scaling of a depth-recurrent Huginn, reproduced from scratch on a CPU.

Trains a small Huginn with the real training stack (the original's stochastic-depth sampler and truncated
backprop, the atan2-Adam optax chain, a grain pipeline, Orbax checkpoints) on running parity, where position t
needs a chain of t XORs, then evaluates accuracy at 1..64 test-time iterations. A non-recurrent baseline with the
same parameters and training (one iteration, always) is the control. Writes ``results.json``, ``scaling.png``
(accuracy against iterations, and accuracy by position) and ``adaptive.png`` (iterations that the KL exit rule
spends per position against the position's difficulty) to ``--out``.

  python experiments/test_time_scaling.py --out outputs/main          # ~4 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

EVAL_STEPS = (1, 2, 4, 8, 16, 32, 64)


def model_config(seq_len: int):
  """A 4-layer Huginn (prelude 1, core 2, coda 1; d=64): small enough to train in minutes on a CPU."""
  import huginn_jax as hj
  config = hj.get_config("tiny", vocab_size=4, d_model=64, n_heads=4, head_dim=16,
                       intermediate_size=128, n_layers_prelude=1, n_layers_core=2, n_layers_coda=1,
                         max_seq_len=seq_len, mean_recurrence=8, mean_backprop_depth=4)
  config.name = "parity-huginn"
  return config


def train_config(args, *, recurrent: bool, workdir: str):
  """The training stack's ``tiny_cpu`` preset with the original's optimizer (atan2 Adam) and a cosine decay."""
  from huginn_jax.training import config as train_config_lib
  c = train_config_lib.get_train_config("tiny_cpu")
  c.seed = args.seed
  c.steps = args.steps
  c.batch_size = args.batch_size
  c.seq_len = args.seq_len
  c.workdir = workdir
  c.optimizer.name = args.optimizer
  c.optimizer.lr = args.lr
  c.optimizer.min_lr = args.lr / 30
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = min(50, args.steps // 5)
  c.optimizer.cooldown_steps = 0
  c.checkpoint.every = args.steps
  c.checkpoint.resume = False
  c.log.every = max(args.steps // 10, 1)
  c.log.tensorboard = False
  c.data.seed = args.seed
  if recurrent:
    c.mean_recurrence, c.mean_backprop_depth = 8, 4  # the original's sampler: p ~ Poisson(LogNormal) + 1
  else:
    c.depth_sampler = "fixed"  # exactly one iteration, every step: a plain 4-layer transformer
    c.mean_recurrence, c.mean_backprop_depth = 1, 1
  return c


def run_training(args, *, recurrent: bool):
  from huginn_jax.tasks.running_parity import RunningParitySource
  from huginn_jax.training.loop import train
  name = "recurrent" if recurrent else "baseline"
  source = RunningParitySource(args.steps * args.batch_size, args.seq_len, seed=args.seed)
  start = time.perf_counter()
  result = train(train_config(args, recurrent=recurrent, workdir=os.path.join(args.out, name)),
                 model_config(args.seq_len), source=source)
  elapsed = time.perf_counter() - start
  return result.state.params, {"train_seconds": elapsed, "final_loss": result.final_metrics.get("loss"),
                               "history": result.history}


def plot(results: dict, path_scaling: str, path_adaptive: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for name, style in (("recurrent", "o-"), ("baseline", "s--")):
    acc = results[name]["accuracy"]
    ax1.plot(list(map(int, acc)), [a["accuracy"] for a in acc.values()], style, label=f"{name}")
  ax1.set_xscale("log", base=2)
  ax1.set_xlabel("test-time iterations r")
  ax1.set_ylabel("accuracy (all positions)")
  ax1.axhline(0.5, color="grey", lw=0.8, ls=":")
  ax1.set_title("Running parity: accuracy vs test-time compute")
  ax1.legend()
  for r, a in results["recurrent"]["accuracy"].items():
    ax2.plot(np.arange(1, len(a["by_position"]) + 1), a["by_position"], label=f"r={r}")
  ax2.set_xlabel("position t (needs t XORs)")
  ax2.set_ylabel("accuracy")
  ax2.set_title("Recurrent model: accuracy by position")
  ax2.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path_scaling, dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5.5, 4))
  for threshold, steps in results["adaptive"]["mean_exit_steps_by_position"].items():
    ax.plot(np.arange(1, len(steps) + 1), steps, "o-", ms=3, label=f"KL < {threshold}")
  ax.set_xlabel("position t (difficulty: t XORs)")
  ax.set_ylabel("iterations spent (mean over sequences)")
  ax.set_title("Adaptive compute: KL exit rule per position")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path_adaptive, dpi=120)
  plt.close(fig)


def verdict(results: dict) -> str:
  rec = {int(r): a["accuracy"] for r, a in results["recurrent"]["accuracy"].items()}
  base = results["baseline"]["accuracy"][1]["accuracy"]
  best_r = min(r for r in rec if rec[r] >= max(rec.values()) - 1e-3)  # the fewest iterations reaching the best
  rises = rec[best_r] > rec[1] + 0.05
  beats = rec[best_r] > base + 0.05
  lines = [f"recurrent: {rec[1]:.3f} at r=1 -> {rec[best_r]:.3f} at r={best_r}; baseline (1 iteration): {base:.3f}"]
  lines.append("accuracy RISES with test-time iterations" if rises else
               "accuracy does NOT rise clearly with iterations in this run (try more --steps or another --seed)")
  lines.append("the recurrent model BEATS the non-recurrent baseline" if beats else
               "the recurrent model does NOT clearly beat the baseline in this run")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="outputs/main")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--seq-len", type=int, default=24)
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--optimizer", default="adam_atan2", choices=("adam_atan2", "adamw"))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--eval-rows", type=int, default=512)
  parser.add_argument("--exit-thresholds", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5])
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.perf_counter()

  from huginn_jax import num_params
  from huginn_jax.tasks import evaluate, running_parity
  config = model_config(args.seq_len)
  print(f"running parity, {args.seq_len} bits; Huginn with {num_params(config):,} params "
        f"(prelude 1, core 2 x r, coda 1); {args.steps} steps of {args.batch_size} sequences")
  results: dict = {"args": vars(args), "params": num_params(config)}
  test = running_parity.make_examples(np.random.default_rng(10_000 + args.seed), args.eval_rows, args.seq_len)
  trained = {}
  for recurrent in (True, False):
    name = "recurrent" if recurrent else "baseline"
    print(f"\n== training the {name} model")
    params, info = run_training(args, recurrent=recurrent)
    trained[name] = params
    info["accuracy"] = evaluate.accuracy_by_steps(params, config, test["inputs"], test["labels"], EVAL_STEPS)
    results[name] = info

  results["adaptive"] = {"max_steps": max(EVAL_STEPS), "thresholds": list(args.exit_thresholds),
                         "mean_exit_steps_by_position": {}}
  for threshold in args.exit_thresholds:
    exit_steps = evaluate.kl_exit_steps(trained["recurrent"], config, test["inputs"], max_steps=max(EVAL_STEPS),
                                        threshold=threshold)
    results["adaptive"]["mean_exit_steps_by_position"][f"{threshold:g}"] = exit_steps.mean(0).tolist()

  print("\n  r | recurrent | baseline")
  for r in EVAL_STEPS:
    print(f"{r:>3} | {results['recurrent']['accuracy'][r]['accuracy']:>9.3f} | "
          f"{results['baseline']['accuracy'][r]['accuracy']:>8.3f}")
  third = args.seq_len // 3
  print(f"\nrecurrent accuracy by position (first / middle / last third of {args.seq_len} bits):")
  for r in EVAL_STEPS:
    pos = np.asarray(results["recurrent"]["accuracy"][r]["by_position"])
    print(f"  r={r:>2}: {pos[:third].mean():.3f} / {pos[third:2 * third].mean():.3f} / {pos[2 * third:].mean():.3f}")
  print("\nadaptive compute, KL exit rule: mean iterations spent over the first / middle / last third")
  for threshold, by_pos in results["adaptive"]["mean_exit_steps_by_position"].items():
    by_pos = np.asarray(by_pos)
    print(f"  KL < {threshold}: {by_pos[:third].mean():.1f} / {by_pos[third:2 * third].mean():.1f} / "
          f"{by_pos[2 * third:].mean():.1f}")
  results["verdict"] = verdict(results)
  results["total_seconds"] = time.perf_counter() - t0
  print("\n" + results["verdict"])
  for name in ("recurrent", "baseline"):
    results[name]["accuracy"] = {str(k): v for k, v in results[name]["accuracy"].items()}
  plot(results, os.path.join(args.out, "scaling.png"), os.path.join(args.out, "adaptive.png"))
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  print(f"\nwrote {args.out}/results.json, scaling.png, adaptive.png in {results['total_seconds']:.0f}s")
  return results


if __name__ == "__main__":
  main()
