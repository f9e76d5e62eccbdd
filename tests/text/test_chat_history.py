"""``huginn-jax chat`` past max_seq_len: the oldest turns are dropped with a notice, a message too long on its own is
refused, and the conversation goes on (it used to end with the history lost)."""

import io

import pytest

from huginn_jax.text.interactive import fit_conversation


def _encode(messages):
  return sum(([0] * (2 + len(m["content"].split())) for m in messages), [])  # 2 tokens of framing per message


def test_oldest_exchanges_are_dropped_first():
  messages = [{"role": "system", "content": "be brief"}]
  for i in range(3):
    messages += [{"role": "user", "content": "w " * 10}, {"role": "assistant", "content": "w " * 10}]
  messages.append({"role": "user", "content": "w " * 5})
  kept, dropped = fit_conversation(messages, _encode, room=40)
  assert dropped == 4 and len(_encode(kept)) <= 40 and kept[1]["role"] == "user"
  assert kept[0] == messages[0] and kept[1:] == messages[5:]  # the system message and the newest turns stay
  assert fit_conversation(messages, _encode, room=1000) == (messages, 0)
  with pytest.raises(ValueError, match="at most 10 fit with --max-new-tokens"):
    fit_conversation(messages, _encode, room=10)


def test_chat_command_keeps_going_past_max_seq_len(tmp_path, tiny_dir):
  import tokenizers
  from tokenizers import models, pre_tokenizers

  from huginn_jax import cli
  from huginn_jax.text.interactive import run_chat
  specials = ["<|begin_text|>", "<|end_text|>", "<|begin_header|>", "<|end_header|>", "<|end_turn|>", "<|pad|>"]
  tok = tokenizers.Tokenizer(models.WordLevel({f"w{i}": i for i in range(250)}
                                              | {s: 250 + i for i, s in enumerate(specials)}, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(specials)
  tok.save(str(tmp_path / "tokenizer.json"))
  args = cli.build_parser().parse_args(["chat", tiny_dir, "--tokenizer", str(tmp_path / "tokenizer.json"),
                                        "--max-new-tokens", "4", "--num-steps", "1", "--init-scale", "0"])
  long_turn = " ".join(["w7"] * 100)  # 100 of the 252 tokens that fit before the reply
  lines = iter([long_turn, long_turn, " ".join(["w7"] * 300), long_turn, ""])
  err = io.StringIO()
  messages = run_chat(args, read=lambda prompt: next(lines), out=io.StringIO(), err=err)
  notices = err.getvalue()
  assert "[dropped the 2 oldest message(s) to fit max_seq_len=256]" in notices
  assert "[not sent: this message is" in notices
  assert [m["role"] for m in messages] == ["user", "assistant"] * 2 and messages[0]["content"] == long_turn
