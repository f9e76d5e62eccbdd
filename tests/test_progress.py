"""huginn_jax.progress: a log file gets whole lines now and then, never a bar's carriage-return redraws."""

import io

import pytest

from huginn_jax import progress as progress_lib


class _Clock:
  """A fake ``time.monotonic`` that the test moves by hand."""

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


@pytest.fixture
def clock(monkeypatch):
  fake = _Clock()
  monkeypatch.setattr(progress_lib.time, "monotonic", fake)
  return fake


def test_a_log_file_gets_a_line_per_interval_and_a_last_line(clock):
  log = io.StringIO()  # not a terminal
  items = []
  for i in progress_lib.progress(range(100), desc="loading", unit="tensor", stream=log, log_every_s=30.0):
    items.append(i)
    clock.now += 1.0  # 100 s in all: lines at 30, 60 and 90 s, then the last one
  assert items == list(range(100))
  lines = log.getvalue().splitlines()
  assert "\r" not in log.getvalue() and len(lines) == 4, lines
  assert lines[0].startswith("loading: 30/100 tensor (30%), 30.0 s, 1.0 tensor/s")
  assert lines[-1] == "loading: 100/100 tensor (100%), 100.0 s, 1.0 tensor/s (done)"


def test_update_counts_without_an_iterable_and_close_is_idempotent(clock):
  log = io.StringIO()
  bar = progress_lib.progress(desc="tokenizing", unit="doc", stream=log, log_every_s=10.0)
  for _ in range(3):
    clock.now += 6.0
    bar.update(500)
  bar.close()
  bar.close()
  assert log.getvalue().splitlines() == ["tokenizing: 1,000 doc, 12.0 s, 83.3 doc/s",
                                         "tokenizing: 1,500 doc, 18.0 s, 83.3 doc/s (done)"]


def test_disabled_or_lines_off_prints_only_what_is_written(clock):
  for kwargs in ({"enabled": False}, {"log_every_s": None}):
    log = io.StringIO()
    bar = progress_lib.progress(total=10, desc="training", unit="step", stream=log, **kwargs)
    clock.now += 100.0
    bar.update(10)
    bar.write("step 10/10  loss 0.1")
    bar.close()
    assert log.getvalue() == "step 10/10  loss 0.1\n"


def test_a_terminal_gets_a_tqdm_bar():
  import tqdm

  class _Terminal(io.StringIO):
    def isatty(self):
      return True

  bar = progress_lib.progress(range(3), desc="loading", stream=_Terminal())
  assert isinstance(bar, tqdm.tqdm) and list(bar) == [0, 1, 2]
