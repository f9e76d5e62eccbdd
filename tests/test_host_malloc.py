"""The one-line report of whether large host buffers get huge pages, and the scripts' setting of the tunable."""

import os
import subprocess

import pytest

from huginn_jax import host_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("tunables, value", [
    ("", None),
    ("glibc.malloc.hugetlb=1", 1),
    ("glibc.malloc.arena_max=1:glibc.malloc.hugetlb=2", 2),
    ("glibc.malloc.hugetlb=0:glibc.pthread.rseq=0", 0),
    ("glibc.malloc.hugetlb=0:glibc.malloc.hugetlb=1", 1),  # the last one wins, as in glibc
    ("glibc.malloc.hugetlb=0x1", 1),
    ("glibc.malloc.hugetlb=2097152", 2097152),  # a page size: MAP_HUGETLB of that size
    ("glibc.malloc.hugetlbx=1", None),
    (" glibc.malloc.hugetlb=1", None),  # glibc does not strip names
    ("glibc.malloc.hugetlb=yes", None),
])
def test_tunable_value_reads_the_list_as_glibc_does(tunables, value):
  assert host_malloc.tunable_value({"GLIBC_TUNABLES": tunables}) == value


def test_tunable_value_without_the_variable():
  assert host_malloc.tunable_value({}) is None


@pytest.mark.parametrize("text, mode", [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                                        ("always madvise [never]", "never"), ("garbage", None)])
def test_thp_mode_reads_the_bracketed_choice(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert host_malloc.thp_mode(str(path)) == mode


def test_thp_mode_and_reserved_pages_without_their_files(tmp_path):
  assert host_malloc.thp_mode(str(tmp_path / "absent")) is None
  assert host_malloc.reserved_huge_pages(str(tmp_path / "absent")) == 0


def test_reserved_huge_pages_reads_meminfo(tmp_path):
  path = tmp_path / "meminfo"
  path.write_text("MemTotal:       24683520 kB\nHugePages_Total:      16\nHugePages_Free:       16\n")
  assert host_malloc.reserved_huge_pages(str(path)) == 16


ON = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
POOL = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2"}


@pytest.mark.parametrize("env, mode, version, reserved, says", [
    (ON, "madvise", (2, 36), 0, "huge pages for large buffers (glibc.malloc.hugetlb=1, kernel THP madvise)"),
    ({}, "madvise", (2, 36), 0, "4 KiB pages, so XLA's per-call buffers are page-faulted on every call"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", (2, 39), 0, "${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc"),
    ({}, "always", (2, 36), 0, "huge pages for large buffers (kernel THP always; the glibc tunable is not needed)"),
    (ON, "never", (2, 36), 0, "4 KiB pages (the kernel offers no transparent huge pages: THP never)"),
    (ON, None, (2, 36), 0, "4 KiB pages (the kernel offers no transparent huge pages: THP absent)"),
    (ON, "madvise", (2, 31), 0, "glibc 2.31 has no glibc.malloc.hugetlb; it needs 2.35"),
    (POOL, "madvise", (2, 36), 0, "4 KiB pages (glibc.malloc.hugetlb=2 asks for reserved hugetlbfs pages and none"),
    (POOL, "never", (2, 36), 8, "reserved hugetlbfs pages for large buffers (glibc.malloc.hugetlb=2, 8 reserved)"),
    (ON, None, None, 0, "not glibc on Linux"),
])
def test_describe_says_the_state_and_the_fix(env, mode, version, reserved, says):
  line = host_malloc.describe(env, mode=mode, version=version, reserved=reserved)
  assert line.startswith("host malloc: ") and says in line and "\n" not in line


def test_describe_reads_this_machine_through_the_same_rules():
  assert host_malloc.describe() == host_malloc.describe(
      os.environ, mode=host_malloc.thp_mode(), version=host_malloc.glibc_version(),
      reserved=host_malloc.reserved_huge_pages())


@pytest.mark.parametrize("before, after", [
    (None, "glibc.malloc.hugetlb=1"),
    ("", "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0"),  # the caller's choice is kept
    ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0:glibc.pthread.rseq=0",
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0:glibc.pthread.rseq=0"),
    ("glibc.malloc.hugetlbx=1", "glibc.malloc.hugetlbx=1:glibc.malloc.hugetlb=1"),
])
def test_the_scripts_add_the_tunable_unless_the_caller_set_it(before, after):
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if before is not None:
    env["GLIBC_TUNABLES"] = before
  script = os.path.join(ROOT, "scripts", "_hugepages.sh")
  done = subprocess.run(["bash", "-euc", f'source "{script}"; printf %s "$GLIBC_TUNABLES"'], env=env,
                        capture_output=True, text=True, check=True)
  assert done.stdout == after
