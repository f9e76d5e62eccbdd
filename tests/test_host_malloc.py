"""The one-line report of whether glibc gives XLA's large per-call host buffers huge pages."""

import pytest

from huginn_jax import host_malloc


@pytest.mark.parametrize("tunables, value", [
    ("", None),
    ("glibc.malloc.hugetlb=1", "1"),
    ("glibc.malloc.arena_max=1:glibc.malloc.hugetlb=2", "2"),
    ("glibc.malloc.hugetlb=0:glibc.pthread.rseq=0", "0"),
    ("glibc.malloc.hugetlbx=1", None),
])
def test_tunable_value_reads_the_colon_separated_list(tunables, value):
  assert host_malloc.tunable_value({"GLIBC_TUNABLES": tunables}) == value


def test_tunable_value_without_the_variable():
  assert host_malloc.tunable_value({}) is None


@pytest.mark.parametrize("text, mode", [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                                        ("always madvise [never]", "never"), ("garbage", None)])
def test_thp_mode_reads_the_bracketed_choice(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert host_malloc.thp_mode(str(path)) == mode


def test_thp_mode_without_the_file(tmp_path):
  assert host_malloc.thp_mode(str(tmp_path / "absent")) is None


ON = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


@pytest.mark.parametrize("env, mode, version, says", [
    (ON, "madvise", (2, 36), "huge pages for large buffers (glibc.malloc.hugetlb=1, kernel THP madvise)"),
    ({}, "madvise", (2, 36), "4 KiB pages, so XLA's per-call buffers are page-faulted on every call"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "always", (2, 39), "export GLIBC_TUNABLES=glibc.malloc.hugetlb=1"),
    (ON, "never", (2, 36), "transparent huge pages are off"),
    (ON, "madvise", (2, 31), "glibc 2.31 has no glibc.malloc.hugetlb; it needs 2.35"),
    (ON, None, None, "not glibc on Linux"),
])
def test_describe_says_the_state_and_the_fix(env, mode, version, says):
  line = host_malloc.describe(env, mode=mode, version=version)
  assert line.startswith("host malloc: ") and says in line and "\n" not in line


def test_describe_reads_this_machine():
  line = host_malloc.describe()
  assert line.startswith("host malloc: ")
