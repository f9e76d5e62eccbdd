"""Shared fixtures: the golden tiny Huginn saved by the original PyTorch code (tests/data/tiny)."""

import os

# Simulated devices for the sharding tests; must be set before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")
TINY = os.path.join(DATA, "tiny")


@pytest.fixture(scope="session")
def tiny_dir() -> str:
  return TINY


@pytest.fixture(scope="session")
def golden() -> dict:
  with np.load(os.path.join(TINY, "golden.npz")) as g:
    return {k: g[k] for k in g.files}


@pytest.fixture(scope="session")
def tiny_model():
  """(config, params) of the golden fixture, loaded through the public API."""
  import huginn_jax as hj
  return hj.load(TINY)


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.fixture(autouse=True, scope="session")
def _float32_matmuls():
  with jax.default_matmul_precision("float32"):
    yield
