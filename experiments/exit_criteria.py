"""Adaptive compute: iterations spent per token against agreement with fixed-iteration decoding, per exit rule.

For each exit criterion (kl, minp-kl, entropy-diff, latent-diff, cosine, argmax-stability) and a few thresholds,
generates greedily with ``hj.generate(..., exit_criterion=, exit_threshold=)`` and records the mean core
iterations spent per new token and the fraction of new tokens equal to those of plain decoding at ``--num-steps``
(the reference). Writes ``results.json`` and ``exit_criteria.png`` (iterations against agreement) to ``--out``.

  python experiments/exit_criteria.py --checkpoint huginn-0125-jax --tokenizer tokenizer.json \
      --out outputs/exits --num-steps 32 --max-new-tokens 64     # ~10 minutes on one GPU, estimated (18 runs)
  python experiments/exit_criteria.py --checkpoint tests/data/tiny --out /tmp/exits --num-steps 8 \
      --max-new-tokens 4                                         # ~1 minute on CPU (one compile per setting)
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment_utils as eu  # noqa: E402

# Thresholds per criterion around the original's defaults: looser exits earlier.
THRESHOLDS = {
    "kl": (1e-2, 1e-3, 1e-4),
    "minp-kl": (1e-3, 1e-5, 1e-7),
    "entropy-diff": (1e-2, 1e-3, 1e-4),
    "latent-diff": (0.1, 0.03, 0.01),
    "cosine": (1e-2, 1e-3, 1e-4),
    "argmax-stability": (2, 5, 10),
}


def agreement(tokens: np.ndarray, reference: np.ndarray) -> float:
  """Fraction of positions where two [B, N] token arrays agree."""
  return float(np.mean(np.asarray(tokens) == np.asarray(reference)))


def prefix_agreement(tokens: np.ndarray, reference: np.ndarray) -> float:
  """Mean fraction of each row decoded identically before the first difference (later tokens see other contexts)."""
  same = np.asarray(tokens) == np.asarray(reference)
  first_diff = np.where(same.all(1), same.shape[1], np.argmin(same, axis=1))
  return float(np.mean(first_diff / same.shape[1]))


def main(argv=None) -> dict:
  parser = eu.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
  parser.add_argument("--num-steps", type=int, default=32, help="iterations of the reference; the most for exits")
  parser.add_argument("--max-new-tokens", type=int, default=32)
  parser.add_argument("--criteria", default=",".join(THRESHOLDS), help="comma-separated exit criteria")
  parser.add_argument("--num-thresholds", type=int, default=3, help="thresholds per criterion (of 3)")
  args = parser.parse_args(argv)
  import huginn_jax as hj
  criteria = [c for c in args.criteria.split(",") if c]
  unknown = [c for c in criteria if c not in THRESHOLDS]
  if unknown:
    parser.error(f"unknown --criteria {unknown}; choose from {sorted(THRESHOLDS)}")
  config, params = eu.load(args.checkpoint)
  rows = eu.prompts(args, config)
  kw = dict(config=config, max_new_tokens=args.max_new_tokens, num_steps=args.num_steps, init_scale=0.0)
  reference = hj.generate(params, rows, **kw)
  ref_tokens = np.asarray(reference.tokens)
  results = {"checkpoint": args.checkpoint, "num_steps": args.num_steps, "max_new_tokens": args.max_new_tokens,
             "reference_mean_steps": float(_mean_steps(reference)), "runs": []}
  try:
    from tqdm import tqdm
  except ImportError:  # pragma: no cover
    tqdm = lambda x, **_: x  # noqa: E731
  settings = [(c, t) for c in criteria for t in THRESHOLDS[c][:args.num_thresholds]]
  for name, threshold in tqdm(settings, desc="exit rules"):
    out = hj.generate(params, rows, exit_criterion=name, exit_threshold=threshold, **kw)
    tokens = np.asarray(out.tokens)
    results["runs"].append({"criterion": name, "threshold": threshold, "mean_steps": _mean_steps(out),
                            "agreement": agreement(tokens, ref_tokens),
                            "prefix_agreement": prefix_agreement(tokens, ref_tokens)})
  plt = eu.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, name in enumerate(criteria):
    runs = [r for r in results["runs"] if r["criterion"] == name]
    ax.plot([r["mean_steps"] for r in runs], [r["agreement"] for r in runs], "o-", color=f"C{i}", label=name)
  ax.axvline(args.num_steps, color="0.5", ls="--", lw=0.8)
  ax.set_xlabel("mean iterations per token")
  ax.set_ylabel(f"token agreement with r={args.num_steps}")
  ax.legend(fontsize=8)
  eu.write(args.out, results, fig, "exit_criteria.png")
  print(f"{'criterion':>16} {'threshold':>10} {'mean steps':>10} {'agreement':>9}")
  for r in results["runs"]:
    print(f"{r['criterion']:>16} {r['threshold']:>10.3g} {r['mean_steps']:>10.2f} {r['agreement']:>9.3f}")
  return results


def _mean_steps(out) -> float:
  """Mean iterations over the tokens actually generated (steps is 0 after a row stops)."""
  steps = np.asarray(out.steps)
  n = np.asarray(out.num_generated)
  made = np.arange(steps.shape[1])[None] < n[:, None]
  return float(steps[made].mean()) if made.any() else 0.0


if __name__ == "__main__":
  main()
