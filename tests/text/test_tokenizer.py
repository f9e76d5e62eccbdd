"""Tokenizer loading, the chat format, incremental detokenization, and the generate/chat commands."""

import importlib
import io
import os

import jax
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

import huginn_jax as hj
from huginn_jax import cli
from huginn_jax.text import tokenizer as tok_lib
from huginn_jax.text.interactive import run_chat

SPECIALS = ["<|begin_text|>", "<|end_text|>", "<|begin_header|>", "<|end_header|>", "<|end_turn|>", "<|pad|>"]


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
  """A 256-token word-level tokenizer.json (the tiny model's vocabulary size): w0..w249 and Huginn's specials."""
  vocab = {f"w{i}": i for i in range(250)} | {s: 250 + i for i, s in enumerate(SPECIALS)}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(SPECIALS)
  path = os.path.join(tmp_path_factory.mktemp("tok"), "tokenizer.json")
  tok.save(path)
  return path


def test_loads_and_knows_the_special_tokens(word_tokenizer):
  tok = tok_lib.Tokenizer.from_file(os.path.dirname(word_tokenizer))
  assert tok.vocab_size == 256 and tok.bos_id == 250 and tok.pad_id == 255 and tok.stop_ids == (250, 251, 254)
  assert tok.encode("w3 w17", add_bos=True) == [250, 3, 17]
  assert tok.decode([3, 17]) == "w3 w17"
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    tok_lib.Tokenizer.from_file(os.path.join(os.path.dirname(word_tokenizer), "missing.json"))


def test_chat_format():
  messages = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": " Hi"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"}]
  assert tok_lib.render_chat(messages) == (
      "<|begin_text|><|begin_header|>system<|end_header|>\n\nBe brief.<|end_turn|>"
      "<|begin_header|>user<|end_header|>\n\nHi<|end_turn|>"
      "<|begin_header|>Huginn<|end_header|>\n\nHello.<|end_turn|>"
      "<|begin_header|>user<|end_header|>\n\nWhy?<|end_turn|>"
      "<|begin_header|>Huginn<|end_header|>\n\n")
  assert tok_lib.render_chat(messages[:1], add_generation_prompt=False).endswith("Be brief.<|end_turn|>")
  with pytest.raises(ValueError, match="role"):
    tok_lib.render_chat([{"content": "x"}])


def test_chat_ids_parse_the_special_tokens(word_tokenizer):
  tok = tok_lib.Tokenizer.from_file(word_tokenizer)
  ids = tok.encode_chat([{"role": "user", "content": "w5 w6"}])
  assert ids == [250, 252, 0, 253, 5, 6, 254, 252, 0, 253]  # roles are unknown words here (w0)


def test_text_stream_holds_back_partial_characters():
  byte_tok = tokenizers.Tokenizer(models.BPE())
  byte_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  byte_tok.decoder = decoders.ByteLevel()
  byte_tok.train_from_iterator(["plain text"], trainers.BpeTrainer(
      vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  tok = tok_lib.Tokenizer(byte_tok)
  ids = tok.encode("aé!")
  assert len(ids) == 4  # 'é' is two byte tokens
  pieces = []
  stream = tok_lib.TextStream(tok, pieces.append, stop_ids=[ids[3]])
  for i in ids:
    stream(np.array([[i]]), np.array([1]))
  assert pieces == ["a", "é"] and stream.end() == "aé"  # '!' was made a stop id: not printed, ends the stream


def _args(tokenizer_path, checkpoint, *extra):
  return [checkpoint, "--tokenizer", tokenizer_path, "--max-new-tokens", "6", "--num-steps", "2",
          "--init-scale", "0", *extra]


def test_generate_command_streams_the_generated_text(word_tokenizer, tiny_dir, tiny_model, capsys):
  assert cli.main(["generate", *_args(word_tokenizer, tiny_dir, "--prompt", "w1 w2 w3")]) == 0
  printed = capsys.readouterr()
  config, params = tiny_model
  prompt = np.full((1, 64), 255, np.int32)
  prompt[0, :4] = [250, 1, 2, 3]
  out = hj.generate(params, prompt, config=config, prompt_lengths=[4], max_new_tokens=6, num_steps=2,
                    init_scale=0.0, key=jax.random.key(0), stop_ids=(250, 251, 254), pad_id=255,
                    stream=lambda tokens, counts: None)  # streaming on, as in the command: the same program
  new = [int(t) for t in np.asarray(out.tokens)[0, :int(out.num_generated[0])] if t not in (250, 251, 254)]
  tok = tok_lib.Tokenizer.from_file(word_tokenizer)
  assert new and printed.out == tok.decode(new) + "\n"
  assert "tok/s" in printed.err


def test_chat_keeps_the_conversation(word_tokenizer, tiny_dir):
  args = cli.build_parser().parse_args(["chat", *_args(word_tokenizer, tiny_dir, "--system", "w9")])
  lines, compiled = iter(["w5 w6", "w7", ""]), []
  generate_module = importlib.import_module("huginn_jax.decoding.generate")

  def read(prompt):
    compiled.append(generate_module.compiled_count())
    return next(lines)

  out = io.StringIO()
  messages = run_chat(args, read=read, out=out, err=io.StringIO())
  assert compiled[1] == compiled[2]  # the second turn (a new stream callback, a new prompt) compiled nothing
  assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
  assert out.getvalue() == messages[2]["content"] + "\n" + messages[4]["content"] + "\n"
  assert messages[2]["content"]  # the tiny model said something
