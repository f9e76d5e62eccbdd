"""The ``huginn-jax generate`` and ``huginn-jax chat`` commands: text in, text streamed out as it is produced."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Callable, TextIO

BUCKET = 64  # prompts are right-padded to a multiple of this, so chat turns of similar length share a compilation


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("checkpoint", help="HF directory or our Orbax directory")
  p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the one in the checkpoint directory)")
  p.add_argument("--max-new-tokens", type=int, default=256)
  p.add_argument("--num-steps", type=int, default=None, help="core iterations per token (default: the config's)")
  p.add_argument("--cache", default="full", help="full | latest-m4 | compress-s{m} | compress-r{m}")
  p.add_argument("--exit-criterion", default=None,
                 help="adaptive compute: kl | minp-kl | entropy-diff | latent-diff | cosine | argmax-stability")
  p.add_argument("--exit-threshold", type=float, default=None)
  p.add_argument("--continuous", action="store_true", help="warm-start each token from the previous latent")
  p.add_argument("--draft-steps", type=int, default=None, help="self-speculative decoding: draft iterations")
  p.add_argument("--lookahead", type=int, default=None, help="self-speculative decoding: tokens per draft")
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top-k", type=int, default=None)
  p.add_argument("--top-p", type=float, default=None)
  p.add_argument("--min-p", type=float, default=None)
  p.add_argument("--repetition-penalty", type=float, default=None)
  p.add_argument("--init-scale", type=float, default=1.0, help="scale of the random initial state (0 = zeros)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dtype", default=None, help="cast params (e.g. bfloat16)")


def _load(args):
  from huginn_jax.checkpoint.io import load
  from huginn_jax.text.tokenizer import Tokenizer
  config, params = load(args.checkpoint, dtype=args.dtype)
  tokenizer = Tokenizer.from_file(args.tokenizer or args.checkpoint)
  if tokenizer.vocab_size > config.vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}; "
                     "pass the model's tokenizer with --tokenizer.")
  return config, params, tokenizer


def _generate_text(config, params, tokenizer, ids: list[int], args, out: TextIO, err: TextIO) -> str:
  """Generates after ``ids`` and streams the text of row 0 to ``out``; returns the text."""
  import jax
  import numpy as np

  from huginn_jax.decoding.generate import PAD_ID, generate
  from huginn_jax.text.tokenizer import TextStream

  room = config.max_seq_len - args.max_new_tokens - (args.lookahead or (8 if args.draft_steps else 0))
  width = min(max(BUCKET * math.ceil(len(ids) / BUCKET), len(ids)), max(room, len(ids)))
  pad = tokenizer.pad_id if tokenizer.pad_id is not None else PAD_ID
  prompt = np.full((1, width), pad, np.int32)
  prompt[0, :len(ids)] = ids
  stop_ids = tokenizer.stop_ids
  stream = TextStream(tokenizer, lambda piece: (out.write(piece), out.flush()), stop_ids=stop_ids)
  start = time.perf_counter()
  result = generate(
      params, prompt, config=config, prompt_lengths=[len(ids)], max_new_tokens=args.max_new_tokens,
      num_steps=args.num_steps, key=jax.random.key(args.seed), init_scale=args.init_scale, cache=args.cache,
      exit_criterion=args.exit_criterion, exit_threshold=args.exit_threshold, continuous=args.continuous,
      draft_steps=args.draft_steps, lookahead=args.lookahead, temperature=args.temperature, top_k=args.top_k,
      top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty, stop_ids=stop_ids or (),
      pad_id=pad, stream=stream)
  count = int(result.num_generated[0])
  seconds = time.perf_counter() - start
  text = stream.end()
  out.write("\n")
  out.flush()
  steps = np.asarray(result.steps)[0, :count]
  err.write(f"[{count} tokens in {seconds:.2f}s = {count / seconds:.2f} tok/s including compilation; "
            f"{steps.mean():.1f} core iterations per token]\n")
  return text


def run_generate(args, out: TextIO | None = None, err: TextIO | None = None) -> str:
  out, err = out or sys.stdout, err or sys.stderr
  config, params, tokenizer = _load(args)
  if args.chat:
    ids = tokenizer.encode_chat([{"role": "user", "content": args.prompt}])
  else:
    ids = tokenizer.encode(args.prompt, add_bos=tokenizer.bos_id is not None)
  return _generate_text(config, params, tokenizer, ids, args, out, err)


def _prompt_room(config, args) -> int:
  """Tokens a prompt may have so that it and ``max_new_tokens`` (and a speculative lookahead) fit max_seq_len."""
  return config.max_seq_len - args.max_new_tokens - (args.lookahead or (8 if args.draft_steps else 0))


def fit_conversation(messages: list, encode: Callable[[list], list], room: int) -> tuple[list, int]:
  """Drops the oldest exchanges (never the system message or the newest user turn) until the encoded conversation
  has at most ``room`` tokens. Returns (the messages kept, how many were dropped); raises ``ValueError`` when the
  newest turn alone does not fit."""
  head = messages[:1] if messages and messages[0]["role"] == "system" else []
  turns = messages[len(head):]
  dropped = 0
  while len(encode(head + turns)) > room:
    if len(turns) <= 1:
      raise ValueError(f"this message is {len(encode(head + turns))} tokens with the system message; at most {room} "
                       "fit with --max-new-tokens in max_seq_len. Shorten it or lower --max-new-tokens.")
    turns, dropped = turns[1:], dropped + 1
    while len(turns) > 1 and turns[0]["role"] != "user":  # the conversation goes on starting with a user turn
      turns, dropped = turns[1:], dropped + 1
  return head + turns, dropped


def run_chat(args, read: Callable[[str], str] = input, out: TextIO | None = None, err: TextIO | None = None) -> list:
  """A conversation on the terminal; an empty line, ``/exit`` or end of input ends it. Returns the messages.

  When the conversation no longer fits ``max_seq_len`` with room for the reply, the oldest turns are dropped (with
  a notice on ``err``); a single message too long to fit is refused and the conversation goes on."""
  out, err = out or sys.stdout, err or sys.stderr
  config, params, tokenizer = _load(args)
  messages = [{"role": "system", "content": args.system}] if args.system else []
  room = _prompt_room(config, args)
  while True:
    try:
      line = read("> ")
    except EOFError:
      break
    if not line.strip() or line.strip() == "/exit":
      break
    try:
      kept, dropped = fit_conversation(messages + [{"role": "user", "content": line}], tokenizer.encode_chat, room)
    except ValueError as error:
      err.write(f"[not sent: {error}]\n")
      continue
    if dropped:
      err.write(f"[dropped the {dropped} oldest message(s) to fit max_seq_len={config.max_seq_len}]\n")
    messages = kept
    reply = _generate_text(config, params, tokenizer, tokenizer.encode_chat(messages), args, out, err)
    messages.append({"role": "assistant", "content": reply})
  return messages
