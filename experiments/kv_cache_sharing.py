"""KV cache sharing: cache memory against generation quality, per cache strategy.

For each strategy (full; compress-s{m}: iteration i writes slot i mod m; compress-r{m}: blocks of iterations share
a slot; latest-m4: a token that exited early is read at its latest computed iteration, so it stores as much as
full and differs from it only with ``--exit-criterion``), decodes greedily with
``hj.generate(..., cache=strategy)`` and records the K/V bytes (``huginn_jax.decoding.cache.cache_bytes``) against
two quality measures: agreement of the new tokens with full-cache decoding, and the mean log-likelihood of the
generated continuation under the model run without any cache (``hj.forward`` at ``--num-steps``; higher = the
text is what the exact model would find likely). Writes ``results.json`` and ``kv_cache.png`` to ``--out``.

  python experiments/kv_cache_sharing.py --checkpoint huginn-0125-jax --tokenizer tokenizer.json \
      --out outputs/kv --num-steps 32 --max-new-tokens 64    # ~5 minutes on one GPU, estimated
  python experiments/kv_cache_sharing.py --checkpoint tests/data/tiny --out /tmp/kv --num-steps 8 \
      --max-new-tokens 4                                     # ~30 seconds on CPU
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment_utils as eu  # noqa: E402

STRATEGIES = ("full", "compress-s4", "compress-s8", "compress-r4", "latest-m4")


def continuation_loglik(params, config, sequences: np.ndarray, prompt_len: int, num_steps: int) -> float:
  """Mean log-probability of tokens after ``prompt_len`` under a cache-free forward at ``num_steps``."""
  import jax
  import jax.numpy as jnp
  import huginn_jax as hj
  fwd = jax.jit(functools.partial(hj.forward, config=config, num_steps=num_steps, init_scale=0.0))
  logits = fwd(params, jnp.asarray(sequences, jnp.int32)).logits
  logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
  targets = sequences[:, prompt_len:]
  picked = np.take_along_axis(logp[:, prompt_len - 1:-1], targets[..., None], axis=-1)[..., 0]
  return float(picked.mean())


def main(argv=None) -> dict:
  parser = eu.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
  parser.add_argument("--num-steps", type=int, default=32)
  parser.add_argument("--max-new-tokens", type=int, default=32)
  parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated cache strategies")
  parser.add_argument("--exit-criterion", default=None, help="decode with this adaptive exit rule (e.g. kl)")
  args = parser.parse_args(argv)
  import huginn_jax as hj
  from huginn_jax.decoding.cache import cache_bytes
  config, params = eu.load(args.checkpoint)
  rows = eu.prompts(args, config)
  width = min(len(r) for r in rows)
  rows = [r[:width] for r in rows]  # equal lengths: the continuation starts at one position for all
  strategies = [s for s in args.strategies.split(",") if s]
  if "full" not in strategies:
    strategies = ["full"] + strategies
  kw = dict(config=config, max_new_tokens=args.max_new_tokens, num_steps=args.num_steps, init_scale=0.0,
            stop_ids=(), exit_criterion=args.exit_criterion)
  max_len = width + args.max_new_tokens
  results = {"checkpoint": args.checkpoint, "num_steps": args.num_steps, "max_new_tokens": args.max_new_tokens,
             "exit_criterion": args.exit_criterion, "batch": len(rows), "max_len": max_len, "runs": []}
  outs = {}
  for name in strategies:
    try:
      outs[name] = hj.generate(params, rows, cache=name, **kw)
    except ValueError as err:  # a strategy this recurrence cannot use (e.g. m > num_steps)
      print(f"skipping {name}: {err}")
  ref = np.asarray(outs["full"].tokens)
  for name, out in outs.items():
    seq = np.asarray(out.sequences)
    results["runs"].append({
        "strategy": name, "cache_bytes": cache_bytes(config, name, args.num_steps, len(rows), max_len),
        "agreement": float(np.mean(np.asarray(out.tokens) == ref)),
        "continuation_loglik": continuation_loglik(params, config, seq, width, args.num_steps)})
  full_bytes = results["runs"][0]["cache_bytes"]
  for r in results["runs"]:
    r["memory_fraction"] = r["cache_bytes"] / full_bytes
  plt = eu.pyplot()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  for i, r in enumerate(results["runs"]):
    ax1.scatter(r["memory_fraction"], r["agreement"], color=f"C{i}", label=r["strategy"])
    ax2.scatter(r["memory_fraction"], r["continuation_loglik"], color=f"C{i}", label=r["strategy"])
  ax1.set_xscale("log")
  ax2.set_xscale("log")
  ax1.set_xlabel("cache memory / full cache")
  ax2.set_xlabel("cache memory / full cache")
  ax1.set_ylabel("token agreement with full cache")
  ax2.set_ylabel("mean log-lik. of continuation (no cache)")
  ax1.legend(fontsize=8)
  eu.write(args.out, results, fig, "kv_cache.png")
  print(f"{'strategy':>12} {'MiB':>10} {'memory':>7} {'agreement':>9} {'loglik':>8}")
  for r in results["runs"]:
    print(f"{r['strategy']:>12} {r['cache_bytes'] / 2**20:>10.3f} {r['memory_fraction']:>7.3f} "
          f"{r['agreement']:>9.3f} {r['continuation_loglik']:>8.3f}")
  return results


if __name__ == "__main__":
  main()
