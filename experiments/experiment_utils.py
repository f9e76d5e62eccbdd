"""Shared plumbing of the experiment scripts: loading a checkpoint, building prompts, writing results."""

from __future__ import annotations

import json
import os

import numpy as np

DEFAULT_TEXTS = ("The capital of France is", "def fibonacci(n):", "Question: what is 12 + 30? Answer:",
                 "Once upon a time")


def add_common_args(parser, *, prompts: int = 4, prompt_len: int = 16):
  parser.add_argument("--checkpoint", required=True, help="HF dir or Orbax dir, loaded by hj.load")
  parser.add_argument("--out", required=True, help="output folder for results.json and plots")
  parser.add_argument("--tokenizer", default=None, help="tokenizer.json; without it, prompts are random token ids")
  parser.add_argument("--num-prompts", type=int, default=prompts)
  parser.add_argument("--prompt-len", type=int, default=prompt_len, help="length of random prompts (no tokenizer)")
  parser.add_argument("--seed", type=int, default=0)
  return parser


def load(path: str):
  import huginn_jax as hj
  if not os.path.exists(path):
    raise FileNotFoundError(f"--checkpoint {path!r} does not exist; pass an HF dir (convert one with `huginn-jax "
                            "convert`) or an Orbax dir written by training.")
  return hj.load(path)


def prompts(args, config) -> list[list[int]]:
  """Token lists: the default texts through --tokenizer, else random ids (seeded) of --prompt-len."""
  if args.tokenizer:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(args.tokenizer)
    texts = [DEFAULT_TEXTS[i % len(DEFAULT_TEXTS)] for i in range(args.num_prompts)]
    return [tok.encode(t).ids for t in texts]
  rng = np.random.default_rng(args.seed)
  return [rng.integers(0, config.vocab_size, args.prompt_len).tolist() for _ in range(args.num_prompts)]


def write_json(path: str, data: dict) -> None:
  """Writes ``data`` whole or not at all (``huginn_jax.atomic_file``): a run killed while writing never leaves half a
  file, and an earlier run's file stays until the new one is complete."""
  from huginn_jax.atomic_file import atomic_file
  with atomic_file(path) as f:
    json.dump(data, f, indent=1)


def write(out: str, results: dict, fig=None, name: str = "plot.png") -> dict:
  os.makedirs(out, exist_ok=True)
  write_json(os.path.join(out, "results.json"), results)
  if fig is not None:
    fig.savefig(os.path.join(out, name), dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
  return results


def pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt
