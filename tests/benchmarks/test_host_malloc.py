"""host_malloc.py runs its children with and without the glibc tunable and tabulates both (no timing checks)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_both_settings_are_measured_in_children_and_tabulated(tmp_path):
  """One round of the main job's train step at one seed: each child must run the job's real step (the experiment's
  flags are read through its make_parser) and report time and page faults for its setting."""
  out = tmp_path / "rows.jsonl"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "host_malloc.py"), "--work", "parity-step",
                         "--rounds", "1", "--calls", "2", "--seeds", "1", "--json", str(out)],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [(r["work"], r["setting"]) for r in rows] == [("parity-step", "4 KiB pages"), ("parity-step", "huge pages")]
  for row in rows:
    assert 0 < row["best_ms"] <= row["median_ms"] and row["faults_per_call"] >= 0
  assert "| parity-step | huge pages |" in proc.stdout and "x the speed of 4 KiB pages" in proc.stdout


def test_a_child_sees_exactly_the_tunable_of_its_setting(monkeypatch):
  """The parent's hugetlb tunable must not leak into the 4 KiB child, nor be doubled in the huge-page one; the
  parent's other tunables reach both."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    import host_malloc as bench
  finally:
    sys.path.pop(0)
  seen = []

  def fake_run(cmd, env, **_):
    seen.append(env.get("GLIBC_TUNABLES"))
    return subprocess.CompletedProcess(cmd, 0, stdout='{"best_ms": 1}\n', stderr="")

  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
  monkeypatch.setattr(bench.subprocess, "run", fake_run)
  args = bench.make_parser().parse_args([])
  for tunables in bench.SETTINGS.values():
    assert bench.run_child("loss-grad", tunables, args) == {"best_ms": 1}
  assert seen == ["glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"]
