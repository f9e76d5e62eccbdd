"""lm-evaluation-harness's own command line, with Huginn registered as ``--model huginn-jax`` (alias ``huginn``).

  huginn-jax lm-eval --model_args pretrained=PATH,num_steps=32 --tasks hellaswag --batch_size 8
  python -m huginn_jax.evaluation.lm_eval_main --model huginn --model_args pretrained=PATH --tasks hellaswag

Every flag is lm_eval's (``--tasks``, ``--include_path``, ``--apply_chat_template``, ``--fewshot_as_multiturn``,
``--system_instruction``, ``--output_path``, ``--limit``, ...), passed on unchanged; ``--model`` defaults to
``huginn-jax``. Each task's results gain ``mean_iterations``: the core iterations spent per scored or generated
token (with an ``exit_criterion`` in ``--model_args``, the adaptive-compute cost; else ``num_steps``).
"""

from __future__ import annotations

import functools
import sys

MODEL_NAMES = ("huginn-jax", "huginn")
ITERATIONS_METRIC = "mean_iterations"


def _import_lm_eval():
  try:
    import lm_eval  # noqa: F401
  except ImportError as err:
    raise ImportError("the lm-eval command needs lm-evaluation-harness: pip install 'huginn-jax[eval]' "
                      "(or lm-eval==0.4.13).") from err


def register() -> None:
  """Registers ``HuginnLM`` with the harness under ``MODEL_NAMES`` (idempotent); the built-in models stay."""
  _import_lm_eval()
  import lm_eval.models  # noqa: F401  (registers the harness's own models first, lazily)
  from lm_eval.api.registry import register_model

  from huginn_jax.evaluation.lm_eval_adapter import HuginnLM
  register_model(*MODEL_NAMES)(HuginnLM)


def add_mean_iterations(results: dict | None) -> dict | None:
  """Copies the adapter's per-task iterations (results["config"]) next to each task's metrics, so the harness's
  table and results file show them beside the accuracy."""
  if not results:
    return results
  per_task = results.get("config", {}).get("huginn_mean_iterations") or {}
  for task, mean in per_task.items():
    if task in results.get("results", {}):
      results["results"][task][f"{ITERATIONS_METRIC},none"] = mean
      results["results"][task][f"{ITERATIONS_METRIC}_stderr,none"] = "N/A"
      results.setdefault("higher_is_better", {}).setdefault(task, {})[ITERATIONS_METRIC] = False
  return results


def _reporting(simple_evaluate):
  @functools.wraps(simple_evaluate)
  def run(*args, **kwargs):
    return add_mean_iterations(simple_evaluate(*args, **kwargs))
  run.huginn_reporting = True
  return run


def _install_reporting() -> None:
  """The harness's ``run`` command calls ``lm_eval.simple_evaluate``: wrap it to add ``mean_iterations``."""
  import lm_eval
  if not getattr(lm_eval.simple_evaluate, "huginn_reporting", False):
    lm_eval.simple_evaluate = _reporting(lm_eval.simple_evaluate)


def _with_default_model(argv: list[str]) -> list[str]:
  """``argv`` with ``run`` first (lm_eval's legacy form inserts it) and ``--model huginn-jax`` unless given."""
  argv = list(argv)
  if argv and argv[0] in ("ls", "validate"):
    return argv
  if argv and argv[0] == "run":
    argv = argv[1:]
  if not any(a == "--model" or a.startswith("--model=") for a in argv) and not any(
      a in ("-h", "--help") for a in argv):
    argv = ["--model", MODEL_NAMES[0]] + argv
  return ["run"] + argv


def main(argv: list[str] | None = None) -> int:
  """Runs lm_eval's command line on ``argv`` (default: this process's arguments) with Huginn registered."""
  argv = sys.argv[1:] if argv is None else list(argv)
  register()
  _install_reporting()
  from lm_eval.__main__ import cli_evaluate
  saved = sys.argv
  sys.argv = ["lm-eval"] + _with_default_model(argv)
  try:
    cli_evaluate()
  except SystemExit as exit_:  # argparse's --help and usage errors
    return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
  finally:
    sys.argv = saved
  return 0


if __name__ == "__main__":
  sys.exit(main())
