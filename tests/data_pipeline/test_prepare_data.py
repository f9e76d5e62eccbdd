"""``prepare-data``: tokenizing text and jsonl with a tokenizer.json and packing documents into token rows."""

import json

import numpy as np
import pytest

from huginn_jax import cli
from huginn_jax.data import prepare, sources

WORDS = ["alpha", "beta", "gamma", "delta", "raven", "huginn", "muninn", "think", "deep", "loop"]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {"[UNK]": 0, prepare.BOS_TOKEN: 1, prepare.EOS_TOKEN: 2}
  vocab.update({w: i + 3 for i, w in enumerate(WORDS)})
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  tok.save(str(path))
  return str(path)


def _documents(n, seed=0):
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(n)]


def _ids(doc):
  return [WORDS.index(w) + 3 for w in doc.split()]


def test_packs_jsonl_and_text_into_rows(tmp_path, tokenizer_path):
  docs = _documents(40)
  with open(tmp_path / "a.jsonl", "w") as f:
    for d in docs[:30]:
      f.write(json.dumps({"text": d}) + "\n")
  for i, d in enumerate(docs[30:]):
    (tmp_path / f"doc{i}.txt").write_text(d)
  summary = prepare.prepare_data([str(tmp_path / "a.jsonl"), str(tmp_path / "doc*.txt")], tokenizer_path,
                                 str(tmp_path / "out"), seq_len=15, rows_per_file=5, show_progress=False)
  stream = sum(([1] + _ids(d) + [2] for d in docs), [])
  rows = len(stream) // 16
  assert summary["rows"] == rows and summary["documents"] == 40 and summary["dropped_tokens"] == len(stream) % 16
  assert len(summary["files"]) == -(-rows // 5)
  src = sources.ParquetSource(str(tmp_path / "out"), row_length=16)
  packed = np.concatenate([src[i] for i in range(len(src))])
  np.testing.assert_array_equal(packed, stream[:rows * 16])
  meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
  assert meta["bos_id"] == 1 and meta["eos_id"] == 2 and meta["row_length"] == 16


def test_arrayrecord_output_and_cli(tmp_path, tokenizer_path, capsys):
  docs = _documents(25, seed=1)
  with open(tmp_path / "in.jsonl", "w") as f:
    for d in docs:
      f.write(json.dumps({"body": d}) + "\n")
  code = cli.main(["prepare-data", str(tmp_path / "in.jsonl"), "--tokenizer", tokenizer_path, "--out",
                   str(tmp_path / "rec"), "--seq-len", "7", "--format", "arrayrecord", "--text-field", "body"])
  assert code == 0 and "rows of 8 tokens from 25 documents" in capsys.readouterr().out
  src = sources.ArrayRecordSource(str(tmp_path / "rec"), row_length=8)
  stream = sum(([1] + _ids(d) + [2] for d in docs), [])
  np.testing.assert_array_equal(np.concatenate([src[i] for i in range(len(src))]), stream[:len(src) * 8])


def test_bad_inputs_are_clear_errors(tmp_path, tokenizer_path, capsys):
  (tmp_path / "bad.jsonl").write_text('{"text": "alpha"}\n{oops\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
    prepare.prepare_data([str(tmp_path / "bad.jsonl")], tokenizer_path, str(tmp_path / "o1"), show_progress=False)
  (tmp_path / "short.txt").write_text("alpha beta")
  with pytest.raises(ValueError, match="not enough for one row of 4097"):
    prepare.prepare_data([str(tmp_path / "short.txt")], tokenizer_path, str(tmp_path / "o2"), show_progress=False)
  assert not (tmp_path / "o2").exists()  # nothing half-written
  code = cli.main(["prepare-data", str(tmp_path / "missing.jsonl"), "--tokenizer", tokenizer_path, "--out",
                   str(tmp_path / "o3")])
  assert code == 2 and "No text or jsonl data files match" in capsys.readouterr().err
  with pytest.raises(FileNotFoundError, match="No tokenizer"):
    prepare.prepare_data([str(tmp_path / "short.txt")], str(tmp_path / "nope.json"), str(tmp_path / "o4"))
