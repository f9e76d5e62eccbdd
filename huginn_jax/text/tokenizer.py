"""Tokenizer loading (an HF ``tokenizer.json``), the Huginn chat format, and incremental detokenization.

Chat format: the BOS token, then per message ``<|begin_header|>{role}<|end_header|>\\n\\n{content}<|end_turn|>``
with the content stripped and the assistant's role written ``Huginn``; a generation prompt is the assistant's
header ``<|begin_header|>Huginn<|end_header|>\\n\\n``.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

BOS = "<|begin_text|>"
EOS = "<|end_text|>"
BEGIN_HEADER = "<|begin_header|>"
END_HEADER = "<|end_header|>"
END_TURN = "<|end_turn|>"
PAD = "<|pad|>"
ASSISTANT = "Huginn"
ROLES = {"assistant": ASSISTANT}


class Tokenizer:
  """A thin wrapper of ``tokenizers.Tokenizer`` that knows Huginn's special tokens."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
    """Loads ``tokenizer.json`` (or the one inside a directory, e.g. a checkpoint directory)."""
    import tokenizers
    path = os.fspath(path)
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"no tokenizer at {path}: pass the path of an HF tokenizer.json (e.g. from "
                              "tomg-group-umd/huginn-0125) with --tokenizer.")
    try:
      loaded = tokenizers.Tokenizer.from_file(path)
    except Exception as err:  # the tokenizers library raises a bare Exception for a file it cannot parse
      raise ValueError(f"{path} is not an HF tokenizer.json ({str(err).splitlines()[0]}); pass the model's "
                       "tokenizer.json with --tokenizer.") from None
    return cls(loaded)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def token_id(self, token: str) -> int | None:
    return self.tokenizer.token_to_id(token)

  @property
  def bos_id(self) -> int | None:
    return self.token_id(BOS)

  @property
  def pad_id(self) -> int | None:
    return self.token_id(PAD)

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Ids of the tokens that end a generation (begin_text, end_text, end_turn), those the vocabulary has."""
    ids = (self.token_id(t) for t in (BOS, EOS, END_TURN))
    return tuple(i for i in ids if i is not None)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = self.tokenizer.encode(text, add_special_tokens=False).ids
    if add_bos:
      if self.bos_id is None:
        raise ValueError(f"the tokenizer has no {BOS} token; encode with add_bos=False.")
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
    return self.encode(render_chat(messages, add_generation_prompt))


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
  """The Huginn chat text of a list of ``{"role": ..., "content": ...}`` messages."""
  parts = [BOS]
  for i, message in enumerate(messages):
    if not isinstance(message, dict) or not {"role", "content"} <= set(message):
      raise ValueError(f"chat message {i} must be a dict with 'role' and 'content', got {message!r}.")
    role = ROLES.get(message["role"], message["role"])
    parts.append(f"{BEGIN_HEADER}{role}{END_HEADER}\n\n{str(message['content']).strip()}{END_TURN}")
  if add_generation_prompt:
    parts.append(f"{BEGIN_HEADER}{ASSISTANT}{END_HEADER}\n\n")
  return "".join(parts)


class TextStream:
  """Turns the token callbacks of ``hj.generate(stream=...)`` into text pieces for one batch row.

  Decodes all of the row's tokens so far and yields only the new suffix, holding back an incomplete UTF-8
  character (a trailing U+FFFD) until the next token completes it; stops at a stop id, which is not printed.
  """

  def __init__(self, tokenizer: Tokenizer, write, row: int = 0, stop_ids: Sequence[int] = (),
               skip_special_tokens: bool = False):
    self.tokenizer, self.write, self.row = tokenizer, write, row
    self.stop_ids, self.skip = set(int(i) for i in stop_ids), skip_special_tokens
    self.ids: list[int] = []
    self.printed = ""
    self.stopped = False

  def __call__(self, tokens: np.ndarray, counts: np.ndarray) -> None:
    for token in np.asarray(tokens)[self.row, :int(np.asarray(counts)[self.row])]:
      if self.stopped or int(token) in self.stop_ids:
        self.stopped = True
        return
      self.ids.append(int(token))
    self._flush(final=False)

  def _flush(self, final: bool) -> None:
    text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip)
    if not final and text.endswith("\ufffd"):
      return
    if text.startswith(self.printed):
      self.write(text[len(self.printed):])
      self.printed = text

  def end(self) -> str:
    """Writes whatever is held back and returns the row's whole text."""
    self._flush(final=True)
    return self.printed
