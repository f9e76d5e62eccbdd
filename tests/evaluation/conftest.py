"""A copy of the tiny fixture with a word-level tokenizer.json built for its 256-word vocabulary."""

import os
import shutil

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

SPECIALS = ["<|begin_text|>", "<|end_text|>", "<|begin_header|>", "<|end_header|>", "<|end_turn|>", "<|pad|>"]


def build_tokenizer() -> tokenizers.Tokenizer:
  """Words w0..w249 are ids 0..249, Huginn's special tokens 250..255 (unknown words map to w0)."""
  vocab = {f"w{i}": i for i in range(250)} | {t: 250 + j for j, t in enumerate(SPECIALS)}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in SPECIALS])
  return tok


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dir, tmp_path_factory) -> str:
  """The tiny fixture's directory with its own tokenizer.json, as a user's checkpoint directory looks."""
  path = str(tmp_path_factory.mktemp("tiny_with_tokenizer") / "tiny")
  shutil.copytree(tiny_dir, path)
  build_tokenizer().save(os.path.join(path, "tokenizer.json"))
  return path
