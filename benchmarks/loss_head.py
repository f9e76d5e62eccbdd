"""The vocabulary projection and cross-entropy with their gradients, as ``hj.cross_entropy`` computes them against the
gather form it replaced (log_softmax, then the label's log-probability by ``take_along_axis``), alternating in one run.

The gather's gradient is a scatter into a zero [tokens, vocab] array; the package picks the label's
log-probability as a masked sum, whose gradient is a select. Both must give the same gradients to the bit and the
same per-token losses (checked first; the summed loss may differ in its last bit where XLA orders the sum
otherwise). Default shape: issue 15's loss + gradients row (256 tokens, d=512, vocab 32768, float32), every 17th
label ignored (-100).

  python benchmarks/loss_head.py                 # ~1 minute on a 2-core CPU
  python benchmarks/loss_head.py --vocab 65536 --tokens 1024 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import huginn_jax as hj
from _common import emit, header


def gather_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The earlier form, as it was: -log_softmax(logits)[label] by take_along_axis, averaged over labels != -100."""
  valid = labels != -100
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  nll = jnp.where(valid & ((labels < 0) | (labels >= logits.shape[-1])), jnp.nan, nll)
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


FORMS = {"masked sum (hj.cross_entropy)": hj.cross_entropy, "gather (log_softmax + take_along_axis)":
         gather_cross_entropy}


def head_loss(cross_entropy):
  """value_and_grad over (x, wte) of cross_entropy(x @ wte.T, labels), jitted."""
  def loss(x, wte, labels):
    return cross_entropy((x @ wte.astype(x.dtype).T).astype(jnp.float32), labels)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dtype", default="float32", help="dtype of the hidden states and the matmuls")
  p.add_argument("--repeats", type=int, default=3, help="timed runs per round; the best is kept")
  p.add_argument("--json", default=None, help="append one JSON line per form to this file")
  p.add_argument("--tokens", type=int, default=256)
  p.add_argument("--d-model", type=int, default=512)
  p.add_argument("--vocab", type=int, default=32768)
  p.add_argument("--rounds", type=int, default=4, help="times each form is timed, alternating")
  args = p.parse_args(argv)
  info = header("loss_head")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, args.tokens, args.d_model)), args.dtype)
  wte = jnp.asarray(rng.normal(size=(args.vocab, args.d_model)) * 0.02, jnp.float32)
  labels = jnp.asarray(rng.integers(0, args.vocab, (1, args.tokens)), jnp.int32)
  labels = labels.at[:, ::17].set(-100)  # some ignored positions, as in padded batches
  fns = {name: head_loss(fn).lower(x, wte, labels).compile() for name, fn in FORMS.items()}
  outs = {name: jax.block_until_ready(fn(x, wte, labels)) for name, fn in fns.items()}
  (ours, ref) = outs.values()
  grads_equal = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(ref[1])))
  loss_diff = abs(float(ours[0]) - float(ref[0])) / max(abs(float(ref[0])), 1e-30)
  print(f"{args.tokens} tokens, d={args.d_model}, vocab {args.vocab}, {args.dtype}: gradients of the two forms "
        f"{'identical' if grads_equal else 'DIFFERENT'}; loss {float(ours[0]):.7g} vs {float(ref[0]):.7g} "
        f"(relative difference {loss_diff:.1e}: per-token values are the same, XLA may sum them in another order)",
        flush=True)
  if not grads_equal or loss_diff > 1e-6:
    sys.exit("the two forms disagree: fix that before timing them")
  best = {name: [] for name in fns}
  for _ in range(args.rounds):
    for name, fn in fns.items():
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(x, wte, labels))
        times.append(time.perf_counter() - start)
      best[name].append(min(times) * 1e3)
  flops = 3 * 2 * args.tokens * args.d_model * args.vocab  # logits, their gradient to x and to wte
  print("| form | best ms per round | best ms | GEMM GFLOP/s |\n|---|---|---|---|")
  rows = []
  for name, ms in best.items():
    print(f"| {name} | {' / '.join(f'{t:.0f}' for t in ms)} | {min(ms):.1f} | {flops / min(ms) / 1e6:.0f} |")
    row = {"form": name, "best_ms": min(ms), "per_round_ms": ms, "tokens": args.tokens, "vocab": args.vocab,
           "d_model": args.d_model, "dtype": args.dtype}
    emit(info, row, args.json)
    rows.append(row)
  ours_ms, ref_ms = (min(ms) for ms in best.values())
  print(f"hj.cross_entropy: {ref_ms / ours_ms:.2f}x the speed of the gather form", flush=True)
  return rows


if __name__ == "__main__":
  main()
