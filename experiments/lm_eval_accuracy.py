"""Accuracy against test-time iterations on a benchmark, through the lm-eval adapter (``HuginnLM``).

For each number of iterations r in ``--steps``, scores a benchmark with ``HuginnLM(num_steps=r)``: either an
lm-evaluation-harness task (``--tasks arc_easy,hellaswag``; needs ``pip install lm_eval`` and its datasets) through
``lm_eval.simple_evaluate``, or a local multiple-choice file (``--jsonl``; one JSON object a line:
``{"context": str, "choices": [str, ...], "answer": int}``) scored with the adapter's ``loglikelihood`` (the
choice of highest total log-likelihood, and of highest per-character log-likelihood: acc and acc_norm). Writes
``results.json`` and ``accuracy.png`` (accuracy against iterations) to ``--out``.

  python experiments/lm_eval_accuracy.py --checkpoint huginn-0125-jax --tokenizer tokenizer.json \
      --out outputs/arc --tasks arc_easy --steps 1,4,8,16,32,64 --prefix-ids 65504   # ~2 hours on one GPU, estimated
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


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--tokenizer", required=True, help="tokenizer.json")
  parser.add_argument("--steps", default="1,4,8,16,32", help="comma-separated iteration counts")
  parser.add_argument("--tasks", default=None, help="lm-eval task names (needs lm_eval installed)")
  parser.add_argument("--jsonl", default=None, help="local multiple-choice file instead of lm-eval tasks")
  parser.add_argument("--limit", type=int, default=None, help="items per task (lm-eval) or from the file")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--prefix-ids", default="", help="comma-separated ids put before every context (BOS)")
  args = parser.parse_args(argv)
  if (args.tasks is None) == (args.jsonl is None):
    parser.error("give exactly one of --tasks (lm-eval) or --jsonl (local multiple-choice file).")
  from tokenizers import Tokenizer
  from huginn_jax.evaluation.lm_eval_adapter import HuginnLM
  steps = [int(s) for s in args.steps.split(",") if s]
  prefix = [int(i) for i in args.prefix_ids.split(",") if i]
  config, params = eu.load(args.checkpoint)
  tokenizer = Tokenizer.from_file(args.tokenizer)
  items = read_jsonl(args.jsonl)[:args.limit] if args.jsonl else None
  results = {"checkpoint": args.checkpoint, "steps": steps, "source": args.jsonl or args.tasks, "by_steps": {}}
  for r in steps:
    lm = HuginnLM(params, config, tokenizer, num_steps=r, batch_size=args.batch_size, prefix_ids=prefix)
    if items is not None:
      results["by_steps"][str(r)] = {"jsonl": jsonl_accuracy(lm, items)}
    else:
      try:
        import lm_eval
      except ImportError as err:
        raise SystemExit("--tasks needs lm_eval (pip install lm_eval); use --jsonl for a local file.") from err
      res = lm_eval.simple_evaluate(model=lm, tasks=args.tasks.split(","), limit=args.limit)
      results["by_steps"][str(r)] = {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
                                     for task, metrics in res["results"].items()}
  plt = eu.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  tasks = list(results["by_steps"][str(steps[0])])
  print(f"{'task':>16} {'r':>4} {'metric':>10} {'value':>7}")
  for i, task in enumerate(tasks):
    metric_names = [k for k in results["by_steps"][str(steps[0])][task] if k.startswith("acc") and "stderr" not in k]
    for j, metric in enumerate(metric_names):
      values = [results["by_steps"][str(r)][task][metric] for r in steps]
      ax.plot(steps, values, marker="o", color=f"C{i}", ls=("-", "--", ":")[j % 3], label=f"{task} {metric}")
      for r, v in zip(steps, values):
        print(f"{task:>16} {r:>4} {metric:>10} {v:>7.3f}")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("recurrent iterations r")
  ax.set_ylabel("accuracy")
  ax.legend(fontsize=8)
  return eu.write(args.out, results, fig, "accuracy.png")


if __name__ == "__main__":
  main()
