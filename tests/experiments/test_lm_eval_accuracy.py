"""Accuracy against iterations: on a local multiple-choice file through the adapter, and on a local lm-eval task
through the real harness (the ``huginn-jax lm-eval`` path), checked against the adapter's own scoring."""

import json
import os

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

import lm_eval_accuracy
from huginn_jax.evaluation.lm_eval_adapter import HuginnLM

TASKS = os.path.join(os.path.dirname(__file__), "..", "evaluation", "tasks")


@pytest.fixture
def files(tmp_path):
  tok = tokenizers.Tokenizer(models.WordLevel({f"w{i}": i for i in range(256)}, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok_path = str(tmp_path / "tokenizer.json")
  tok.save(tok_path)
  items = [{"context": "w1 w2 w3", "choices": [" w4", " w5 w6", " w7"], "answer": 0},
           {"context": "w10 w20", "choices": [" w30", " w40"], "answer": 1},
           {"context": "w9 w8 w7 w6", "choices": [" w5", " w4 w3"], "answer": 0}]
  data = str(tmp_path / "mc.jsonl")
  with open(data, "w") as f:
    f.write("\n".join(json.dumps(it) for it in items) + "\n")
  return tok_path, data


def test_lm_eval_accuracy_on_a_local_file(tiny_dir, tmp_path, files):
  tok_path, data = files
  out = str(tmp_path / "acc")
  res = lm_eval_accuracy.main(["--checkpoint", tiny_dir, "--out", out, "--tokenizer", tok_path, "--jsonl", data,
                               "--steps", "1,4", "--batch-size", "4"])
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(res))
  assert saved["steps"] == [1, 4] and list(saved["by_steps"]) == ["1", "4"]
  for r in ("1", "4"):
    m = saved["by_steps"][r]["jsonl"]
    assert m["n"] == 3
    for key in ("acc", "acc_norm"):
      assert m[key] in (0.0, 1 / 3, 2 / 3, 1.0)
  assert os.path.getsize(os.path.join(out, "accuracy.png")) > 1000


def test_bad_inputs_are_named(tiny_dir, tmp_path, files):
  tok_path, data = files
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"context": "w1", "choices": ["w2"], "answer": 3}) + "\n")
  with pytest.raises(ValueError, match="bad.jsonl:1"):
    lm_eval_accuracy.read_jsonl(str(bad))
  with pytest.raises(SystemExit):  # neither --tasks nor --jsonl
    lm_eval_accuracy.main(["--checkpoint", tiny_dir, "--out", str(tmp_path), "--tokenizer", tok_path])
  with pytest.raises(SystemExit):  # --prefix-ids belongs to --jsonl
    lm_eval_accuracy.main(["--checkpoint", tiny_dir, "--out", str(tmp_path), "--tokenizer", tok_path,
                           "--tasks", "toy_choice", "--prefix-ids", "1"])


def test_lm_eval_accuracy_through_the_harness_on_a_local_task(tiny_dir, tmp_path, files, monkeypatch):
  """--tasks with --include-path: one ``huginn-jax lm-eval`` run per r; its acc is the adapter's argmax accuracy at
  that r over the task's items, and its mean iterations r."""
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  tok_path, _ = files
  out = str(tmp_path / "acc")
  res = lm_eval_accuracy.main(["--checkpoint", tiny_dir, "--out", out, "--tokenizer", tok_path, "--tasks",
                               "toy_choice", "--include-path", TASKS, "--steps", "1,4", "--batch-size", "4",
                               "--limit", "5"])
  with open(os.path.join(TASKS, "huginn_toy", "choice.jsonl")) as f:
    items = [json.loads(line) for line in f][:5]
  for r in (1, 4):
    got = res["by_steps"][str(r)]["toy_choice"]
    lm = HuginnLM.from_pretrained(tiny_dir, tokenizer=tok_path, num_steps=r, batch_size=4, progress=False)
    expected = lm_eval_accuracy.jsonl_accuracy(lm, [dict(it, choices=[" " + c for c in it["choices"]])
                                                    for it in items])
    assert got["acc,none"] == pytest.approx(expected["acc"])
    assert got["mean_iterations,none"] == r
    assert os.listdir(os.path.join(out, "lm_eval", f"r{r}"))  # the harness's own results files
  assert res["by_steps"]["1"]["toy_choice"] != res["by_steps"]["4"]["toy_choice"]
  assert os.path.getsize(os.path.join(out, "accuracy.png")) > 1000
