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


def test_a_step_that_does_not_fit_gets_a_report_not_a_traceback():
  import importlib.util
  spec = importlib.util.spec_from_file_location("memory_check", os.path.join(REPO, "tpu_setup", "memory_check.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  # the TPU compiler's refusal of v5litepod-64 with 2 x 4096 tokens per chip, 2026-11-29
  error = RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
                       "(16.08G) exceeds available HBM (15.75G).")
  message = module.out_of_memory_message(error, "huginn-0125 on v5litepod-64")
  assert message.startswith("huginn-0125 on v5litepod-64: does NOT fit")
  assert "16.08G" in message and "--micro-batch" in message and "fsdp" in message
  assert module.out_of_memory_message(ValueError("mesh axis fsdp=3 does not divide 5280"), "x") is None
