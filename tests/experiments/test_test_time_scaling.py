"""The main job at a reduced budget on two seeds: more iterations must beat one (a large effect where a seed finds
the links: +0.216 and +0.227 here at lr 2e-3, both seeds at 1.000 from r=8), and the job must write its table,
plots, per-seed results and verdict."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import test_time_scaling

SEEDS = (0, 1)
BITS = 12
RISE = 0.15  # the better seed's gain from r=1 to its best r (measured 2026-12-03, lr 2e-3: +0.216 and +0.227)
REDUCED = ["--seeds", *map(str, SEEDS), "--bits", str(BITS), "--steps", "600", "--eval-tokens", "1024",
           "--exit-thresholds", "1e-3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("main")
  results = test_time_scaling.main(["--out", str(out), *REDUCED])
  return out, results


def test_more_iterations_beat_one(run):
  """A seed may still fail to find the links (at the full budget one in 30 did at lr 3e-3, none of 30 at 2e-3;
  another machine's rounding acts as another seed), so the better of two seeds must gain clearly, and no seed may
  lose accuracy by iterating more."""
  _, results = run
  length = str(BITS)
  rec = np.asarray([results["recurrent"]["accuracy"][length][str(r)] for r in test_time_scaling.EVAL_STEPS])
  best = rec.max(axis=0)  # per seed
  assert (best - rec[0]).max() >= RISE, f"recurrent seeds from r=1 {rec[0]} to their best {best}"
  assert (rec[-1] >= rec[0] - 0.01).all(), f"r=128 {rec[-1]} below r=1 {rec[0]}"


def test_job_writes_every_seed_table_plots_and_verdict(run, capsys):
  out, results = run
  for name in ("results.json", "scaling.png", "adaptive.png"):
    assert os.path.getsize(out / name) > 1000, name
  with open(out / "results.json") as f:
    stored = json.load(f)
  assert stored["seeds"] == list(SEEDS) and stored["test_lengths"] == [BITS, 2 * BITS, 4 * BITS]
  assert stored["passed"] == results["passed"] and len(stored["checks"]) == 3
  for model in test_time_scaling.MODELS:
    for length in stored["test_lengths"]:
      acc = stored[model]["accuracy"][str(length)]
      steps = test_time_scaling.EVAL_STEPS if model == "recurrent" else test_time_scaling.BASELINE_STEPS
      assert sorted(int(r) for r in acc) == list(steps)
      assert all(len(per_seed) == len(SEEDS) and all(0 <= a <= 1 for a in per_seed) for per_seed in acc.values())
      by_links = stored[model]["by_links"][str(length)]
      assert sorted(int(r) for r in by_links) == list(steps)
      assert all(1 < len(p) <= length and all(0 <= a <= 1 for a in p) for p in by_links.values())
    assert len(stored[model]["checkpoints"]) == len(SEEDS)
    assert all(np.isfinite(stored[model]["final_loss"]))
  for length in stored["test_lengths"]:
    steps = np.asarray(stored["recurrent"]["exit_steps_by_links"][str(length)]["0.001"])
    assert steps.shape == (len(stored["recurrent"]["by_links"][str(length)]["1"]),)
    assert (steps >= 1).all() and (steps <= max(test_time_scaling.EVAL_STEPS)).all()


def test_verdict_fails_on_the_worst_seed():
  """One seed that did not learn fails the verdict even when the median is perfect."""
  good, bad = [0.6, 1.0, 1.0], [0.6, 0.62, 0.62]
  acc = {str(r): [g, g, b] for r, g, b in zip((1, 8, 16), good, bad)}
  results = {"train_len": 8, "recurrent": {"accuracy": {"8": acc}},
             "baseline": {"accuracy": {"8": {str(r): [0.6, 0.6, 0.6] for r in (1, 8, 16)}}}}
  checks = dict(test_time_scaling.checks(results))
  assert [ok for ok in checks.values()] == [False, False, True]


def test_the_margin_is_over_the_median_baseline_seed_and_names_the_best_one():
  """Every recurrent seed must beat the baseline's median seed by the margin; the best baseline seed is reported."""
  acc = {str(r): [a, a, a] for r, a in zip((1, 8, 16), (0.6, 0.8, 0.8))}
  for baseline, passes in (([0.6, 0.6, 0.9], True), ([0.6, 0.7, 0.9], False)):
    results = {"train_len": 8, "recurrent": {"accuracy": {"8": acc}},
               "baseline": {"accuracy": {"8": {"1": baseline}}}}
    (text, ok), = [c for c in test_time_scaling.checks(results) if "baseline" in c[0]]
    assert ok == passes and "best baseline seed 0.900" in text, text


def test_trapezoid_schedule_keeps_the_peak_lr_until_the_last_quarter():
  """``--schedule trapezoid``: warmup, the peak lr, then a linear cooldown to lr/30 over the last quarter."""
  from huginn_jax.training import schedule
  args = test_time_scaling.argparse.Namespace(steps=1000, batch_size=16, bits=20, optimizer="adam_atan2", lr=3e-3,
                                              schedule="trapezoid", mean_recurrence=8, backprop_depth=4,
                                              init_scale=1.0, weight_decay=5e-4)
  lr = schedule.make_schedule(test_time_scaling.train_config(args, recurrent=True).optimizer, 1000)
  assert np.isclose(float(lr(50)), 3e-3) and np.isclose(float(lr(749)), 3e-3)
  assert np.isclose(float(lr(1000)), 1e-4) and float(lr(749)) > float(lr(875)) > float(lr(1000))
  cosine = test_time_scaling.train_config(test_time_scaling.argparse.Namespace(**{**vars(args), "schedule": "cosine"}),
                                          recurrent=True).optimizer
  assert float(schedule.make_schedule(cosine, 1000)(500)) < 2.5e-3  # cosine decays from the start


def test_bad_layers_are_refused_in_one_line_before_anything_is_written(tmp_path):
  out = tmp_path / "main"
  for layers in (["1", "0", "0"], ["1", "2", "-1"]):
    proc = subprocess.run([sys.executable, test_time_scaling.__file__, "--out", str(out), "--layers", *layers],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    expected = f"--layers needs a core of at least 1 layer and no negative count, got {' '.join(layers)}"
    assert proc.stderr.strip().splitlines()[-1].endswith(expected + " (the default: 1 2 0).")
    assert not out.exists()


def test_a_second_run_on_the_same_out_is_refused_in_one_line(tmp_path):
  """Two runs on one --out would overwrite each other's checkpoints and results: while one holds it, the command
  exits at once with one line naming the holder and the flag to change, and writes nothing."""
  from huginn_jax.training.workdir_lock import WorkdirLock
  script = os.path.join(os.path.dirname(test_time_scaling.__file__), "test_time_scaling.py")
  with WorkdirLock(str(tmp_path)):
    done = subprocess.run([sys.executable, script, "--out", str(tmp_path), *REDUCED], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(script))})
  assert done.returncode == 1
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and f"pid {os.getpid()}" in lines[0], done.stderr
  assert "--out" in lines[0]
  assert sorted(os.listdir(tmp_path)) == ["train.lock"]
