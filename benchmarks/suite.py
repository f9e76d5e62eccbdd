"""Every benchmark of issue 7 in one command: prefill, cached decode and the train step, each in its own process
(so one's memory does not weigh on the next), then a table and a bar plot of the figures against the targets and
the original.

  python benchmarks/suite.py --shape huginn-0125 --out benchmarks/results    # on one GPU: the full run
  python benchmarks/suite.py --quick                                         # tiny shape on CPU, a few seconds

The targets are for the full huginn-0125 shape on one H100/H200; for other shapes the table has no targets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# (what, row fields it matches, target tok/s, the original PyTorch code's tok/s on an H100 80GB; DESIGN.md sec. 5)
TARGETS = (
    ("prefill r=32, batch 1", {"work": "prefill", "batch": 1}, 5500.0, 3845.0),
    ("decode r=32, batch 1, full cache", {"work": "decode", "batch": 1, "cache": "full"}, 20.0, 2.6),
    ("decode r=32, batch 8, full cache", {"work": "decode", "batch": 8, "cache": "full"}, None, 25.0),
    ("decode r=32, batch 64, compress-s4", {"work": "decode", "batch": 64, "cache": "compress-s4"}, 600.0, None),
    ("train step n=24 + k=8, batch 1", {"work": "train_step", "batch": 1}, 3400.0, 2409.0),
)


def jobs(args) -> list[tuple[str, list[str]]]:
  """(script, its arguments) of every benchmark of the suite."""
  common = ["--shape", args.shape, "--dtype", args.dtype, "--attention", args.attention,
            "--repeats", str(args.repeats)] + (["--force"] if args.force else [])
  seq, new = (64, 8) if args.quick else (args.seq_len, 64)
  batches = ["1", "8"] if args.quick else ["1", "8", "64"]
  return [
      ("prefill.py", common + ["--seq-len", str(seq), "--num-steps", "32", "--breakdown"]),
      ("decode.py", common + ["--batches", *batches, "--caches", "full", "compress-s4", "--num-steps", "32",
                              "--prompt-len", "32", "--new-tokens", str(new)]),
      ("train_step.py", common + ["--seq-len", str(seq), "--batch", "1", "--num-steps", "32", "--backprop", "8",
                                  "--remat", args.remat]),
  ]


def run_job(script: str, argv: list[str], json_path: str, timeout: float) -> tuple[bool, str]:
  """Runs one benchmark script; returns (succeeded, the tail of its output)."""
  cmd = [sys.executable, os.path.join(HERE, script), *argv, "--json", json_path]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return False, f"timed out after {timeout:.0f} s"
  output = (proc.stdout + proc.stderr).strip()
  return proc.returncode == 0, output


def matches(row: dict, fields: dict) -> bool:
  return all(row.get(k) == v for k, v in fields.items())


def table(rows: list[dict], with_targets: bool) -> str:
  """Markdown: one line per benchmark row; targets and the original where the row is one of issue 7's figures."""
  lines = ["| work | shape | batch | cache / remat | tok/s | MFU | BW use | peak GiB | target | original | met |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    target = original = None
    if with_targets:
      for _, fields, t, o in TARGETS:
        if matches(row, fields):
          target, original = t, o
    met = "" if target is None else ("yes" if row["tokens_per_s"] >= target else "**no**")
    pct = lambda x: "" if x is None else f"{x:.1%}"  # noqa: E731
    num = lambda x, pattern="{:,.1f}": "" if x is None else pattern.format(x)  # noqa: E731
    lines.append(f"| {row['work']} | {row['shape']} | {row['batch']} | {row.get('cache') or row.get('remat') or ''} | "
                 f"{row['tokens_per_s']:,.1f} | {pct(row.get('mfu'))} | {pct(row.get('bandwidth_use'))} | "
                 f"{num(row.get('peak_gib'), '{:.1f}')} | {num(target)} | "
                 f"{num(original)} | {met} |")
  return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str, with_targets: bool = True) -> None:
  """Bars of tokens/s per row, each next to its target and the original's figure where it has them (log scale:
  decode at batch 1 and prefill differ by three orders of magnitude)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  labels, measured, targets, originals = [], [], [], []
  for row in rows:
    labels.append(f"{row['work']}\nb{row['batch']} {row.get('cache') or ''}".strip())
    measured.append(row["tokens_per_s"])
    target = next(((t, o) for _, fields, t, o in TARGETS if with_targets and matches(row, fields)), (None, None))
    targets.append(target[0] or 0.0)
    originals.append(target[1] or 0.0)
  x = range(len(rows))
  fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows)), 4.0))
  ax.bar([i - 0.27 for i in x], measured, width=0.27, label="huginn-jax")
  if any(targets):
    ax.bar(list(x), targets, width=0.27, label="target", color="tab:green", alpha=0.6)
  if any(originals):
    ax.bar([i + 0.27 for i in x], originals, width=0.27, label="original (PyTorch)", color="tab:gray")
  ax.set_xticks(list(x), labels, fontsize=7)
  ax.set_yscale("log")
  ax.set_ylabel("tokens/s")
  ax.set_title(title, fontsize=8)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shape", default="tiny")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--attention", default="auto")
  p.add_argument("--remat", default="nothing_saveable", help="remat policy of the train step")
  p.add_argument("--seq-len", type=int, default=4096)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--quick", action="store_true", help="short sequences, batches 1 and 8, few tokens (a smoke run)")
  p.add_argument("--only", nargs="+", choices=("prefill", "decode", "train_step"), help="run only these")
  p.add_argument("--timeout", type=float, default=600.0, help="seconds per benchmark process")
  p.add_argument("--out", default=None, help="directory for results.jsonl and results.md")
  p.add_argument("--force", action="store_true", help="allow a >1B-parameter shape on CPU")
  args = p.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    json_path = os.path.join(tmp, "rows.jsonl")
    failures = []
    for script, job_argv in jobs(args):
      name = script.removesuffix(".py")
      if args.only and name not in args.only:
        continue
      start = time.perf_counter()
      print(f"[{name}] running ...", flush=True)
      ok, output = run_job(script, job_argv, json_path, args.timeout)
      print("\n".join("  " + line for line in output.splitlines()[-12:]), flush=True)
      print(f"[{name}] {'done' if ok else 'FAILED'} in {time.perf_counter() - start:.0f} s", flush=True)
      if not ok:
        failures.append(name)
    rows = []
    if os.path.exists(json_path):
      with open(json_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]

  with_targets = args.shape == "huginn-0125"
  head = rows[0] if rows else {}
  title = (f"Benchmarks of {args.shape} ({args.dtype}) on {head.get('devices', '?')}x {head.get('device', '?')}, "
           f"jax {head.get('jax', '?')}, {head.get('date', datetime.date.today().isoformat())}")
  report = title + "\n\n" + table(rows, with_targets)
  if not with_targets:
    report += "\n\n(targets are for the huginn-0125 shape on one H100/H200; this run is not comparable to them)"
  print("\n" + report, flush=True)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.jsonl"), "a") as f:
      f.writelines(json.dumps(row) + "\n" for row in rows)
    with open(os.path.join(args.out, "results.md"), "a") as f:
      f.write(report + "\n\n")
    if rows:
      plot(rows, os.path.join(args.out, "results.png"), title, with_targets)
    print(f"appended to {args.out}/results.jsonl and results.md; plotted {args.out}/results.png")
  if failures:
    print(f"failed: {', '.join(failures)}", file=sys.stderr)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
