"""loss_head.py checks that both forms of the cross-entropy agree, then times them (no timing checks)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_both_forms_agree_and_are_tabulated(tmp_path):
  out = tmp_path / "rows.jsonl"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "loss_head.py"), "--tokens", "16",
                         "--d-model", "32", "--vocab", "512", "--rounds", "1", "--repeats", "1", "--json", str(out)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["form"].split()[0] for r in rows] == ["masked", "gather"]
  assert all(r["best_ms"] > 0 and r["vocab"] == 512 for r in rows)
  assert "gradients of the two forms identical" in proc.stdout
  assert "x the speed of the gather form" in proc.stdout
