"""The ``huginn-jax`` command line: ``convert``, ``export``, ``forward``, ``generate``, ``chat``, ``train``,
``prepare-data``, ``lm-eval``."""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import time


def _convert(args) -> None:
  from huginn_jax.checkpoint.convert import convert
  start = time.perf_counter()
  out = convert(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)
  print(f"converted {args.src} -> {out} in {time.perf_counter() - start:.1f}s")


def _export(args) -> None:
  from huginn_jax.checkpoint.io import export_hf, load
  config, params = load(args.src)
  out = export_hf(args.dst, config, params, dtype=args.dtype, overwrite=args.overwrite)
  print(f"exported {args.src} -> {out}")


def _forward(args) -> None:
  """Prints next-token loss and entropy of a text's tokens at several recurrence counts."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from huginn_jax.api import forward
  from huginn_jax.checkpoint.io import load
  from huginn_jax.config import num_params
  config, params = load(args.checkpoint)
  rng = np.random.default_rng(args.seed)
  tokens = jnp.asarray(rng.integers(0, config.vocab_size, (args.batch, args.seq_len)), jnp.int32)
  fwd = jax.jit(functools.partial(forward, config=config, init_scale=0.0))
  print(f"model {config.name}: d={config.d_model}, heads={config.n_heads}, {num_params(config):,} params")
  print(f"{'steps':>6} {'mean entropy':>13} {'latent norm':>12} {'change vs prev':>15}")
  prev = None
  for steps in args.steps:
    out = fwd(params, tokens, num_steps=jnp.int32(steps))
    logp = jax.nn.log_softmax(out.logits, -1)
    entropy = float(-(jnp.exp(logp) * logp).sum(-1).mean())
    norm = float(jnp.linalg.norm(out.latents, axis=-1).mean())
    change = "" if prev is None else f"{float(jnp.abs(out.logits - prev).max()):.3e}"
    print(f"{steps:>6} {entropy:>13.4f} {norm:>12.3f} {change:>15}")
    prev = out.logits


def _generate(args) -> None:
  from huginn_jax.text.interactive import run_generate
  run_generate(args)


def _chat(args) -> None:
  from huginn_jax.text.interactive import run_chat
  run_chat(args)


def _train(args) -> None:
  from huginn_jax.training import config as train_config_lib
  from huginn_jax.training import loop
  experiment = train_config_lib.apply_overrides(train_config_lib.load_experiment(args.config), args.set or [])
  if args.workdir:
    experiment.train.workdir = args.workdir
  if args.init_from:
    experiment.train.init_from = args.init_from
  result = loop.train(experiment.train, experiment.model)
  print(f"trained {int(result.state.step)} steps; final loss {result.final_metrics.get('loss', float('nan')):.4f}; "
        f"outputs in {experiment.train.workdir}")
  if result.stopped_by is not None:  # a clean early stop: the shell's convention for "ended by this signal"
    return 128 + int(getattr(signal, result.stopped_by))
  return 0


def _prepare_data(args) -> None:
  from huginn_jax.data.prepare import prepare_data
  summary = prepare_data(args.inputs, args.tokenizer, args.out, seq_len=args.seq_len, fmt=args.format,
                         text_field=args.text_field, bos_id=args.bos_id, eos_id=args.eos_id,
                         rows_per_file=args.rows_per_file, overwrite=args.overwrite)
  print(f"wrote {summary['rows']} rows of {summary['row_length']} tokens from {summary['documents']} documents "
        f"({summary['dropped_tokens']} tokens of the last partial row dropped) to {args.out}")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="huginn-jax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("convert", help="HF/PyTorch checkpoint -> Orbax directory (streamed, atomic)")
  p.add_argument("src", help="HF directory (config.json + *.safetensors [+ index]) or a .pth/.bin file")
  p.add_argument("dst", help="output Orbax directory")
  p.add_argument("--dtype", default=None, help="cast params to this dtype (default: the checkpoint's)")
  p.add_argument("--overwrite", action="store_true", help="replace dst if it exists")
  p.set_defaults(fn=_convert)

  p = sub.add_parser("export", help="our checkpoint -> HF safetensors directory the original code loads")
  p.add_argument("src")
  p.add_argument("dst")
  p.add_argument("--dtype", default=None)
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(fn=_export)

  p = sub.add_parser("forward", help="forward random tokens at several recurrence counts and print statistics")
  p.add_argument("checkpoint")
  p.add_argument("--steps", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16, 32])
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--seq-len", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(fn=_forward)

  from huginn_jax.text.interactive import add_generation_arguments
  p = sub.add_parser("generate", help="generate text after a prompt, streamed as it is produced")
  add_generation_arguments(p)
  p.add_argument("--prompt", required=True)
  p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat format")
  p.set_defaults(fn=_generate)

  p = sub.add_parser("chat", help="chat with the model on the terminal (chat format, streamed replies)")
  add_generation_arguments(p)
  p.add_argument("--system", default=None, help="a system message")
  p.set_defaults(fn=_chat)

  p = sub.add_parser("train", help="train or fine-tune from an experiment config (experiments/configs/*.py)")
  p.add_argument("--config", required=True, help="a Python file whose get_config() returns model + train sections")
  p.add_argument("--workdir", default=None, help="checkpoints and logs go here (default: train.workdir)")
  p.add_argument("--init-from", default=None, help="fine-tune from this checkpoint (HF dir or our Orbax dir)")
  p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. train.steps=100 model.d_model=128")
  p.set_defaults(fn=_train)

  p = sub.add_parser("prepare-data", help="tokenize .txt/.jsonl with a tokenizer.json into packed token rows")
  p.add_argument("inputs", nargs="+", help=".txt files (one document each), .jsonl files (one per line), dirs, globs")
  p.add_argument("--tokenizer", required=True, help="an HF tokenizer.json")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--seq-len", type=int, default=4096, help="rows hold seq_len + 1 tokens (default 4096 -> 4097)")
  p.add_argument("--format", choices=("parquet", "arrayrecord"), default="parquet")
  p.add_argument("--text-field", default="text", help="the jsonl field holding the text")
  p.add_argument("--bos-id", type=int, default=None, help="default: the tokenizer's <|begin_text|>")
  p.add_argument("--eos-id", type=int, default=None, help="default: the tokenizer's <|end_text|>")
  p.add_argument("--rows-per-file", type=int, default=8192)
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(fn=_prepare_data)

  sub.add_parser("lm-eval", add_help=False, help="lm-evaluation-harness's command line with --model huginn-jax: "
                 "all of lm_eval's flags (--model_args pretrained=PATH,num_steps=32 --tasks ...); needs [eval]")
  return parser


def _lm_eval(argv: list[str]) -> int:
  """``huginn-jax lm-eval ...``: every argument goes to lm_eval's own parser (see evaluation/lm_eval_main.py)."""
  from huginn_jax.evaluation import lm_eval_main
  try:
    return lm_eval_main.main(argv)
  except (FileNotFoundError, ValueError, ImportError) as err:
    print(f"huginn-jax lm-eval: error: {err}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["lm-eval"]:  # its flags are lm_eval's, parsed there
    return _lm_eval(argv[1:])
  from huginn_jax.training.errors import TrainingDiverged, WorkdirLocked
  args = build_parser().parse_args(argv)
  try:
    return args.fn(args) or 0
  except (FileNotFoundError, FileExistsError, KeyError, ValueError, ImportError, WorkdirLocked) as err:
    print(f"huginn-jax {args.command}: error: {err}", file=sys.stderr)
    return 2
  except TrainingDiverged as err:
    print(f"huginn-jax {args.command}: training diverged: {err}", file=sys.stderr)
    return 3


if __name__ == "__main__":
  sys.exit(main())
