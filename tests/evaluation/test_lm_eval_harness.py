"""``huginn-jax lm-eval`` end to end through the real lm-evaluation-harness, on the local toy tasks
(tests/evaluation/tasks/huginn_toy: multiple choice, loglikelihood_rolling, generate_until), checked against the
adapter's own scoring of the same items."""

import contextlib
import glob
import io
import json
import math
import os
import re

import numpy as np
import pytest

from huginn_jax import cli
from huginn_jax.text.tokenizer import render_chat
from huginn_jax.evaluation.lm_eval_adapter import HuginnLM

TASKS = os.path.join(os.path.dirname(__file__), "tasks")  # --include_path
TOY = os.path.join(TASKS, "huginn_toy")
STEPS = 4


class _Req:
  def __init__(self, *args, task_name=None):
    self.args, self.task_name = args, task_name


def _rows(name):
  with open(os.path.join(TOY, name)) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def offline():
  """No hub: the toy tasks load their JSONL files, nothing else may reach for the network. The harness indexes only
  the --include_path tasks, not its thousands of built-in ones (several seconds per command, none of them used)."""
  import functools
  import lm_eval.tasks
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager, include_defaults=False))
    yield


def _run(out_dir, *argv):
  """``huginn-jax lm-eval ARGV --output_path OUT --log_samples`` in this process: (exit code, printed text,
  results, {task: samples})."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    code = cli.main(["lm-eval", *argv, "--include_path", TASKS, "--output_path", str(out_dir), "--log_samples"])
  (results_file,) = glob.glob(os.path.join(str(out_dir), "*", "results_*.json"))
  with open(results_file) as f:
    results = json.load(f)
  samples = {}
  for path in glob.glob(os.path.join(str(out_dir), "*", "samples_*.jsonl")):
    task = re.match(r"samples_(.+)_\d{4}-", os.path.basename(path)).group(1)
    with open(path) as f:
      samples[task] = sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])
  return code, printed.getvalue(), results, samples


@pytest.fixture(scope="module")
def fixed(offline, tiny_checkpoint, tmp_path_factory):
  """The three toy tasks at 4 iterations per token, the model and tokenizer from the checkpoint directory."""
  return _run(tmp_path_factory.mktemp("fixed"), "--model_args", f"pretrained={tiny_checkpoint},num_steps={STEPS}",
              "--tasks", "huginn_toy", "--batch_size", "4")


@pytest.fixture(scope="module")
def lm(tiny_checkpoint):
  return HuginnLM.from_pretrained(tiny_checkpoint, num_steps=STEPS, batch_size=4, progress=False)


def test_the_command_runs_the_harness_and_prints_accuracy_with_iterations(fixed):
  code, printed, results, samples = fixed
  assert code == 0
  assert set(results["results"]) == {"toy_choice", "toy_rolling", "toy_generate"} == set(samples)
  table = {line.split("|")[1].strip() or None for line in printed.splitlines() if line.startswith("|toy_")}
  assert table == {"toy_choice", "toy_rolling", "toy_generate"}
  assert re.search(r"\|toy_choice .*\|acc +\|", printed) and printed.count("|mean_iterations|") == 3
  for task in results["results"].values():
    assert task["mean_iterations,none"] == STEPS  # every token ran the fixed number of iterations
  assert results["config"]["model"] == "huginn-jax" and results["config"]["huginn_num_steps"] == STEPS


def test_multiple_choice_matches_the_adapters_own_scoring(fixed, lm):
  _, _, results, samples = fixed
  items = _rows("choice.jsonl")
  hits, hits_norm = [], []
  for item, sample in zip(items, samples["toy_choice"]):
    scores = [ll for ll, _ in lm.loglikelihood([_Req(item["context"], " " + c) for c in item["choices"]])]
    logged = [float(r[0][0]) for r in sample["resps"]]
    np.testing.assert_allclose(logged, scores, rtol=1e-6, atol=1e-5)
    hits.append(int(np.argmax(scores)) == item["answer"])
    hits_norm.append(int(np.argmax(np.array(scores) / [len(c) for c in item["choices"]])) == item["answer"])
  assert results["results"]["toy_choice"]["acc,none"] == pytest.approx(np.mean(hits))
  assert results["results"]["toy_choice"]["acc_norm,none"] == pytest.approx(np.mean(hits_norm))
  assert len(items) == 8 and 0 < np.mean(hits_norm) < 1  # a nontrivial score, not a constant


def test_rolling_perplexities_match_the_adapters_own_scoring(fixed, lm):
  _, _, results, _ = fixed
  texts = [row["text"] for row in _rows("rolling.jsonl")]
  total = sum(lm.loglikelihood_rolling([_Req(t) for t in texts]))
  words = sum(len(re.split(r"\s+", t)) for t in texts)
  n_bytes = sum(len(t.encode()) for t in texts)
  got = results["results"]["toy_rolling"]
  assert got["word_perplexity,none"] == pytest.approx(math.exp(-total / words), rel=1e-5)
  assert got["byte_perplexity,none"] == pytest.approx(math.exp(-total / n_bytes), rel=1e-5)
  assert got["bits_per_byte,none"] == pytest.approx(-total / n_bytes / math.log(2), rel=1e-5)


def test_generation_matches_the_adapters_own_generation(fixed, lm):
  _, _, results, samples = fixed
  items = _rows("generate.jsonl")
  gen_kwargs = {"until": ["\n\n"], "max_gen_toks": 3, "do_sample": False}
  texts = lm.generate_until([_Req(item["question"], dict(gen_kwargs)) for item in items])
  assert [s["resps"][0][0] for s in samples["toy_generate"]] == texts
  expected = np.mean([t == item["answer"] for t, item in zip(texts, items)])
  assert results["results"]["toy_generate"]["exact_match,none"] == pytest.approx(expected)


@pytest.fixture(scope="module")
def adaptive_chat(offline, tiny_checkpoint, tmp_path_factory):
  """Adaptive compute (an exit criterion) with the paper's GSM8K flags: chat template, few-shot as multi-turn, a
  system instruction."""
  args = dict(num_steps=8, exit_criterion="entropy-diff", exit_threshold=0.05)
  run = _run(tmp_path_factory.mktemp("adaptive_chat"), "--model_args",
             f"pretrained={tiny_checkpoint}," + ",".join(f"{k}={v}" for k, v in args.items()),
             "--tasks", "toy_choice,toy_generate", "--batch_size", "4", "--apply_chat_template",
             "--fewshot_as_multiturn", "--system_instruction", "w7 w8", "--num_fewshot", "1", "--limit", "4")
  return run, HuginnLM.from_pretrained(tiny_checkpoint, batch_size=4, progress=False, **args)


def _logged(sample):
  return [tuple(a.values()) for _, a in sorted(sample["arguments"].items())]


def test_adaptive_compute_reports_the_iterations_spent(adaptive_chat):
  """With an exit criterion the harness's numbers are the adapter's adaptive scoring and generation of the same
  requests, and mean_iterations the iterations their tokens spent: fewer than the maximum, not the same per task."""
  (code, printed, results, samples), lm = adaptive_chat
  assert code == 0 and "mean_iterations" in printed
  hits = []
  for sample in samples["toy_choice"]:
    scores = [ll for ll, _ in lm.loglikelihood([_Req(*args, task_name="toy_choice") for args in _logged(sample)])]
    np.testing.assert_allclose([float(r[0][0]) for r in sample["resps"]], scores, rtol=1e-6, atol=1e-5)
    hits.append(int(np.argmax(scores)) == sample["doc"]["answer"])
  texts = lm.generate_until([_Req(*_logged(s)[0], task_name="toy_generate") for s in samples["toy_generate"]])
  assert [s["resps"][0][0] for s in samples["toy_generate"]] == texts
  assert results["results"]["toy_choice"]["acc,none"] == pytest.approx(np.mean(hits))
  mean = {task: results["results"][task]["mean_iterations,none"] for task in ("toy_choice", "toy_generate")}
  assert mean == pytest.approx(lm.mean_iterations())
  assert all(1 <= m < 8 for m in mean.values()) and mean["toy_choice"] != mean["toy_generate"]


def test_chat_template_few_shot_as_multiturn_with_a_system_instruction(adaptive_chat):
  """The harness builds Huginn chat prompts through the adapter: one BOS, the system message, a few-shot turn,
  the question and the assistant's header."""
  (_, _, results, samples), lm = adaptive_chat
  assert results["config"]["huginn_exit_criterion"] == "entropy-diff"
  items = _rows("generate.jsonl")
  for sample in samples["toy_generate"]:
    prompt = sample["arguments"]["gen_args_0"]["arg_0"]
    question = items[sample["doc_id"]]["question"]
    assert prompt.startswith(render_chat([{"role": "system", "content": "w7 w8"}], add_generation_prompt=False))
    assert prompt.endswith(render_chat([{"role": "user", "content": question}])[len("<|begin_text|>"):])
    assert prompt.count("<|begin_text|>") == 1 and prompt.count("<|begin_header|>Huginn<|end_header|>") == 2
    ids = lm._context_ids(prompt)
    assert ids[0] == 250 and ids[1] != 250  # the chat text's own BOS, no second one


def test_model_args_errors_are_named(tiny_checkpoint):
  with pytest.raises(ValueError, match="unknown --model_args \\['num_step'\\]"):
    HuginnLM.create_from_arg_string(f"pretrained={tiny_checkpoint},num_step=4")
  with pytest.raises(ValueError, match="pretrained=PATH"):
    HuginnLM.create_from_arg_string("num_steps=4")
  with pytest.raises(ValueError, match="disagree"):
    HuginnLM.create_from_arg_string(f"pretrained={tiny_checkpoint},num_steps=4,mean_recurrence=8")
  with pytest.raises(ValueError, match="exit_criterion"):
    HuginnLM.create_from_arg_string(f"pretrained={tiny_checkpoint},exit_criterion=never")
  lm = HuginnLM.create_from_arg_string(f"pretrained={tiny_checkpoint},mean_recurrence=3,cache=latest-m4",
                                       {"batch_size": "auto", "max_batch_size": 2, "device": None})
  assert (lm.num_steps, lm.batch_size, lm.cache, lm.prefix_ids) == (3, 2, "latest-m4", [250])
  assert lm.stop_ids == (250, 251, 254)


def test_registration_keeps_the_harness_models_and_the_default_model():
  from lm_eval.api.registry import get_model, model_registry
  from huginn_jax.evaluation import lm_eval_main
  lm_eval_main.register()
  lm_eval_main.register()  # idempotent
  assert get_model("huginn-jax") is HuginnLM and get_model("huginn") is HuginnLM
  assert "hf" in model_registry.keys()  # the built-in models are still there
  assert lm_eval_main._with_default_model(["--tasks", "x"]) == ["run", "--model", "huginn-jax", "--tasks", "x"]
  assert lm_eval_main._with_default_model(["run", "--model", "hf"]) == ["run", "--model", "hf"]
  assert lm_eval_main._with_default_model(["ls", "tasks"]) == ["ls", "tasks"]


def test_the_command_names_a_missing_checkpoint(offline, tmp_path, capsys):
  code = cli.main(["lm-eval", "--model_args", f"pretrained={tmp_path / 'nowhere'}", "--tasks", "toy_choice",
                   "--include_path", TASKS])
  assert code == 2 and "huginn-jax lm-eval: error:" in capsys.readouterr().err
