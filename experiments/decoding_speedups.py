"""Warm-start, self-speculative and diffusion-style speedups: tokens per second, tokens per core pass, agreement.

Decodes the same prompts greedily six ways: plain (``--num-steps`` iterations per token), warm start
(``continuous=True``: each token's state starts from the previous token's final latent), warm start with the KL
exit rule, the KL exit rule alone, self-speculative decoding (``draft_steps`` iterations draft ``lookahead``
tokens that one ``num_steps`` pass verifies) and the diffusion-style sampler (``hj.generate_diffusion``: a wavefront
of up to ``--diffusion-wavefront`` positions refined ``--diffusion-inner`` iterations per round, frozen once its
latents settle below ``--diffusion-exit-t``). Each mode is compiled by a first call and then timed over
``--repeats`` calls (wall clock, ``block_until_ready``). Records tokens/s, speedup over plain, mean iterations per
token, token agreement with plain decoding and tokens per sequential core pass (the prompt's prefill counted as
``num_steps`` passes in every mode; for plain and adaptive modes one pass per iteration of each token, for the
diffusion sampler ``inner`` passes per round however wide the wavefront; speculative decoding's draft passes are
not reported by ``hj.generate``, so it has none). Writes ``results.json`` and ``speedups.png`` to ``--out``.

  python experiments/decoding_speedups.py --checkpoint huginn-0125-jax --tokenizer tokenizer.json \
      --out outputs/speed --num-steps 32 --max-new-tokens 128      # ~5 minutes on one GPU, estimated
  python experiments/decoding_speedups.py --checkpoint tests/data/tiny --out /tmp/speed --num-steps 8 \
      --max-new-tokens 4                                           # ~40 seconds on CPU (compiles dominate)

Timings on a CPU measure dispatch more than compute; report figures taken on the accelerator.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment_utils as eu  # noqa: E402


def modes(args) -> dict[str, dict]:
  """generate() keyword arguments of each decoding mode."""
  return {
      "plain": {},
      "warm-start": {"continuous": True},
      "adaptive-kl": {"exit_criterion": "kl", "exit_threshold": args.kl_threshold},
      "warm-start+kl": {"continuous": True, "exit_criterion": "kl", "exit_threshold": args.kl_threshold},
      "speculative": {"draft_steps": args.draft_steps, "lookahead": args.lookahead},
      "diffusion": {"inner_recurrence": args.diffusion_inner, "max_wavefront": args.diffusion_wavefront,
                    "exit_t": args.diffusion_exit_t, "cache": "latest-m4-compress-s4"},
  }


def run_diffusion(hj, params, rows, base, settings, max_new_tokens):
  """hj.generate_diffusion in the shape of a generate() result: (new tokens [B, N] padded, new-token counts,
  sequential core passes per row)."""
  kw = {k: v for k, v in base.items() if k != "stop_ids"}
  out = hj.generate_diffusion(params, rows, stop_ids=(), **kw, **settings)
  lengths, seqs = np.asarray(out.lengths), np.asarray(out.sequences)
  width = np.array([len(r) for r in rows])
  tokens = np.full((len(rows), max_new_tokens), -1)
  for b, (n, p) in enumerate(zip(lengths, width)):
    new = seqs[b, p:n][:max_new_tokens]
    tokens[b, :len(new)] = new
  passes = base["num_steps"] + settings["inner_recurrence"] * np.asarray(out.rounds)
  recurrences = np.asarray(out.recurrences)
  iterations = [recurrences[b, p:n] for b, (n, p) in enumerate(zip(lengths, width))]
  mean_steps = float(np.concatenate(iterations).mean()) if sum(len(i) for i in iterations) else 0.0
  return out, tokens, lengths - width, passes, mean_steps


def main(argv=None) -> dict:
  parser = eu.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
  parser.add_argument("--num-steps", type=int, default=32)
  parser.add_argument("--max-new-tokens", type=int, default=64)
  parser.add_argument("--draft-steps", type=int, default=4, help="iterations of the speculative drafts")
  parser.add_argument("--lookahead", type=int, default=4, help="draft tokens verified per pass")
  parser.add_argument("--kl-threshold", type=float, default=5e-4)
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode, after a compiling one")
  parser.add_argument("--diffusion-inner", type=int, default=4, help="core iterations per diffusion round")
  parser.add_argument("--diffusion-wavefront", type=int, default=16, help="most positions in flight")
  parser.add_argument("--diffusion-exit-t", type=float, default=0.03, help="latent change that freezes a position")
  parser.add_argument("--modes", default="plain,warm-start,adaptive-kl,warm-start+kl,speculative,diffusion")
  args = parser.parse_args(argv)
  import jax
  import huginn_jax as hj
  table = modes(args)
  chosen = [m for m in args.modes.split(",") if m]
  unknown = [m for m in chosen if m not in table]
  if unknown:
    parser.error(f"unknown --modes {unknown}; choose from {sorted(table)}")
  if "plain" not in chosen:
    chosen = ["plain"] + chosen
  config, params = eu.load(args.checkpoint)
  rows = eu.prompts(args, config)
  base = dict(config=config, max_new_tokens=args.max_new_tokens, num_steps=args.num_steps, init_scale=0.0,
              stop_ids=())
  results = {"checkpoint": args.checkpoint, "num_steps": args.num_steps, "max_new_tokens": args.max_new_tokens,
             "batch": len(rows), "device": str(jax.devices()[0].platform), "runs": []}
  ref = None
  for name in chosen:
    if name == "diffusion":
      decode = lambda: run_diffusion(hj, params, rows, base, table[name], args.max_new_tokens)  # noqa: E731
    else:
      decode = lambda: hj.generate(params, rows, **dict(base, **table[name]))  # noqa: E731
    out = jax.block_until_ready(decode())  # compiles
    times = []
    for _ in range(max(args.repeats, 1)):
      start = time.perf_counter()
      out = jax.block_until_ready(decode())
      times.append(time.perf_counter() - start)
    if name == "diffusion":
      out, tokens, counts, passes, mean_steps = out
      n_new = int(counts.sum())
      extra = {field: np.asarray(getattr(out, field)).tolist() for field in (
          "rounds", "core_forward_passes", "tokens_forwarded", "cache_clears", "standing_waves")}
    else:
      tokens = np.asarray(out.tokens)
      n_new = int(np.asarray(out.num_generated).sum())
      steps = np.asarray(out.steps)
      made = np.arange(steps.shape[1])[None] < np.asarray(out.num_generated)[:, None]
      mean_steps = float(steps[made].mean())
      passes = None if name == "speculative" else steps.sum(axis=1)  # the first token's steps are the prefill's
      extra = {}
    ref = tokens if ref is None else ref
    seconds = float(np.median(times))
    results["runs"].append({"mode": name, "settings": table[name], "seconds": seconds,
                            "tokens_per_second": n_new / seconds, "mean_steps": mean_steps,
                            "agreement": float(np.mean(tokens == ref)),
                            "tokens_per_core_pass": None if passes is None else n_new / float(np.sum(passes)),
                            **extra})
  plain = results["runs"][0]["tokens_per_second"]
  for r in results["runs"]:
    r["speedup"] = r["tokens_per_second"] / plain
  plt = eu.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, r in enumerate(results["runs"]):
    ax.scatter(r["speedup"], r["agreement"], color=f"C{i}", s=40, label=r["mode"])
  ax.axvline(1.0, color="0.5", ls="--", lw=0.8)
  ax.set_xlabel("speedup over plain decoding (tokens/s)")
  ax.set_ylabel("token agreement with plain greedy")
  ax.legend(fontsize=8)
  eu.write(args.out, results, fig, "speedups.png")
  print(f"{'mode':>14} {'tok/s':>9} {'speedup':>8} {'steps':>6} {'agreement':>9} {'tok/pass':>9}")
  for r in results["runs"]:
    per_pass = "-" if r["tokens_per_core_pass"] is None else f"{r['tokens_per_core_pass']:.3f}"
    print(f"{r['mode']:>14} {r['tokens_per_second']:>9.1f} {r['speedup']:>8.2f} {r['mean_steps']:>6.2f} "
          f"{r['agreement']:>9.3f} {per_pass:>9}")
  return results


if __name__ == "__main__":
  main()
