"""Accuracy against test-time iterations on a benchmark, through the lm-eval adapter (``HuginnLM``).

For each number of iterations r in ``--steps``, scores a benchmark at r iterations per token: either
lm-evaluation-harness tasks (``--tasks arc_easy,hellaswag``, or local ones with ``--include-path DIR``; needs
``pip install 'huginn-jax[eval]'``) through the same command line users run, ``huginn-jax lm-eval --model_args
pretrained=CKPT,num_steps=r ...`` (its results files go to ``OUT/lm_eval/r{r}``), or a local multiple-choice file
(``--jsonl``; one JSON object a line: ``{"context": str, "choices": [str, ...], "answer": int}``) scored with the
adapter's ``loglikelihood`` (the choice of highest total log-likelihood, and of highest per-character
log-likelihood: acc and acc_norm). With ``--exit-criterion`` r is the most iterations and each task also reports the
mean iterations its tokens spent. Arguments this script does not know are passed to lm_eval unchanged (e.g.
``--apply_chat_template``). Writes ``results.json`` and ``accuracy.png`` (accuracy against iterations) to ``--out``.

  python experiments/lm_eval_accuracy.py --checkpoint huginn-0125-jax --out outputs/arc --tasks arc_easy \
      --steps 1,4,8,16,32,64                                   # ~2 hours on one GPU, estimated
  python experiments/lm_eval_accuracy.py --checkpoint tests/data/tiny --tokenizer tok.json --out /tmp/acc \
      --tasks toy_choice --include-path tests/evaluation/tasks --steps 1,4    # about a minute on CPU
  python experiments/lm_eval_accuracy.py --checkpoint tests/data/tiny --tokenizer tok.json \
      --out /tmp/acc --jsonl questions.jsonl --steps 1,4,8                          # ~20 seconds on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment_utils as eu  # noqa: E402


class _Request:
  def __init__(self, *args):
    self.args = args


def read_jsonl(path: str) -> list[dict]:
  """Multiple-choice items; a clear error names the line that lacks a field."""
  items = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      item = json.loads(line)
      missing = [k for k in ("context", "choices", "answer") if k not in item]
      if missing or not 0 <= int(item.get("answer", -1)) < len(item.get("choices", [])):
        raise ValueError(f"{path}:{n} needs 'context', 'choices' (a list) and 'answer' (an index into choices); "
                         f"missing {missing} or answer out of range.")
      items.append(item)
  if not items:
    raise ValueError(f"{path} holds no items.")
  return items


def jsonl_accuracy(lm, items: list[dict]) -> dict:
  """acc (argmax of summed log-likelihood) and acc_norm (per character of the choice) over the items."""
  requests = [_Request(it["context"], choice) for it in items for choice in it["choices"]]
  scores = [ll for ll, _ in lm.loglikelihood(requests)]
  hits, hits_norm, i = [], [], 0
  for it in items:
    k = len(it["choices"])
    ll = np.array(scores[i:i + k])
    lengths = np.array([max(len(c), 1) for c in it["choices"]])
    hits.append(int(ll.argmax()) == int(it["answer"]))
    hits_norm.append(int((ll / lengths).argmax()) == int(it["answer"]))
    i += k
  return {"acc": float(np.mean(hits)), "acc_norm": float(np.mean(hits_norm)), "n": len(items)}


def harness_accuracy(args, r: int, extra: list[str]) -> dict:
  """One ``huginn-jax lm-eval`` run at r iterations: {task: numeric metrics} from its results file."""
  import glob
  from huginn_jax.evaluation import lm_eval_main
  model_args = {"pretrained": args.checkpoint, "num_steps": r, "tokenizer": args.tokenizer,
                "exit_criterion": args.exit_criterion, "exit_threshold": args.exit_threshold}
  out = os.path.join(args.out, "lm_eval", f"r{r}")
  argv = ["--model_args", ",".join(f"{k}={v}" for k, v in model_args.items() if v is not None),
          "--tasks", args.tasks, "--batch_size", str(args.batch_size), "--output_path", out]
  argv += ["--include_path", args.include_path] if args.include_path else []
  argv += ["--limit", str(args.limit)] if args.limit is not None else []
  code = lm_eval_main.main(argv + extra)
  files = sorted(glob.glob(os.path.join(out, "*", "results_*.json")), key=os.path.getmtime)
  if code != 0 or not files:
    raise SystemExit(f"huginn-jax lm-eval {' '.join(argv + extra)} failed (exit code {code}).")
  with open(files[-1]) as f:
    res = json.load(f)
  return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
          for task, metrics in res["results"].items()}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the checkpoint directory's)")
  parser.add_argument("--steps", default="1,4,8,16,32", help="comma-separated iteration counts")
  parser.add_argument("--tasks", default=None, help="lm-eval task names (needs huginn-jax[eval])")
  parser.add_argument("--include-path", default=None, help="a directory of extra lm-eval task YAMLs")
  parser.add_argument("--jsonl", default=None, help="local multiple-choice file instead of lm-eval tasks")
  parser.add_argument("--limit", type=int, default=None, help="items per task (lm-eval) or from the file")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--exit-criterion", default=None, help="adaptive compute (lm-eval tasks): e.g. kl")
  parser.add_argument("--exit-threshold", type=float, default=None)
  parser.add_argument("--prefix-ids", default="", help="--jsonl: comma-separated ids put before every context (BOS)")
  args, extra = parser.parse_known_args(argv)
  if (args.tasks is None) == (args.jsonl is None):
    parser.error("give exactly one of --tasks (lm-eval) or --jsonl (local multiple-choice file).")
  if args.jsonl and (extra or args.exit_criterion):
    given = extra or ["--exit-criterion"]
    parser.error(f"--jsonl scores at fixed iterations and takes no lm_eval arguments; got {given}.")
  if args.tasks and args.prefix_ids:
    parser.error("--prefix-ids is for --jsonl; lm-eval tasks start every context with the tokenizer's BOS.")
  steps = [int(s) for s in args.steps.split(",") if s]
  results = {"checkpoint": args.checkpoint, "steps": steps, "source": args.jsonl or args.tasks,
             "exit_criterion": args.exit_criterion, "by_steps": {}}
  if args.jsonl:
    from huginn_jax.text.tokenizer import Tokenizer
    from huginn_jax.evaluation.lm_eval_adapter import HuginnLM
    config, params = eu.load(args.checkpoint)
    tokenizer = Tokenizer.from_file(args.tokenizer or args.checkpoint)
    prefix = [int(i) for i in args.prefix_ids.split(",") if i]
    items = read_jsonl(args.jsonl)[:args.limit]
    for r in steps:
      lm = HuginnLM(params, config, tokenizer, num_steps=r, batch_size=args.batch_size, prefix_ids=prefix)
      results["by_steps"][str(r)] = {"jsonl": jsonl_accuracy(lm, items)}
  else:
    for r in steps:
      results["by_steps"][str(r)] = harness_accuracy(args, r, extra)
  plt = eu.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  tasks = list(results["by_steps"][str(steps[0])])
  print(f"{'task':>16} {'r':>4} {'metric':>16} {'value':>7} {'mean iterations':>16}")
  for i, task in enumerate(tasks):
    first = results["by_steps"][str(steps[0])][task]
    metric_names = [k for k in first if k.startswith(("acc", "exact_match")) and "stderr" not in k]
    for j, metric in enumerate(metric_names):
      values = [results["by_steps"][str(r)][task][metric] for r in steps]
      ax.plot(steps, values, marker="o", color=f"C{i}", ls=("-", "--", ":")[j % 3], label=f"{task} {metric}")
      for r, v in zip(steps, values):
        spent = results["by_steps"][str(r)][task].get("mean_iterations,none")
        print(f"{task:>16} {r:>4} {metric:>16} {v:>7.3f} {'' if spent is None else f'{spent:16.2f}'}")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("recurrent iterations r" + (" (most; adaptive exit)" if args.exit_criterion else ""))
  ax.set_ylabel("accuracy")
  ax.legend(fontsize=8)
  return eu.write(args.out, results, fig, "accuracy.png")


if __name__ == "__main__":
  main()
