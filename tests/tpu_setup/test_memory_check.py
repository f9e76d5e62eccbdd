"""tpu_setup/memory_check.py end to end on simulated CPU devices with the tiny model."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_memory_check_prints_the_per_device_report():
  env = {**os.environ, "PYTHONPATH": REPO}
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, "tpu_setup/memory_check.py", "--cpu", "--config", "tiny", "--mesh", "2,4,1",
                           "--seq-len", "32", "--steps", "1,1", "--attention", "xla"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "tiny on simulated CPU devices, mesh (data, fsdp, tensor) = (2, 4, 1), 1 x 32 tokens per device" in out
  for row in ("input: train state (fp32 params + atan2-Adam moments)", "input: batch", "temporaries", "aliased", "total"):
    assert re.search(rf"{re.escape(row)}.*GiB", out), row
