"""Running parity: read a bit string and emit, at every position t, the XOR of bits 0..t.

Position t depends on every earlier bit through a chain of t XORs, so later positions are harder: a model that
propagates one step of the chain per unit of depth needs depth growing with t. This is the prefix-sum task of
"Can You Learn an Algorithm?" (Schwarzschild et al., 2021), the classic probe of recurrent-depth extrapolation.
Tokens: 0 and 1 (the vocabulary of the demo model has a few spare ids that never occur).
"""

from __future__ import annotations

import numpy as np


def make_examples(rng: np.random.Generator, batch: int, seq_len: int) -> dict[str, np.ndarray]:
  """``inputs`` bits [batch, seq_len] and ``labels`` their running parity, both int32."""
  bits = rng.integers(0, 2, (batch, seq_len), dtype=np.int32)
  return {"inputs": bits, "labels": (np.cumsum(bits, axis=1) % 2).astype(np.int32)}


class RunningParitySource:
  """A random-access (grain) source of ``num_rows`` examples; row i is a pure function of (seed, i)."""

  def __init__(self, num_rows: int, seq_len: int, seed: int = 0):
    if num_rows <= 0 or seq_len <= 0:
      raise ValueError(f"num_rows and seq_len must be positive, got {num_rows} and {seq_len}.")
    self.num_rows, self.seq_len, self.seed = num_rows, seq_len, seed

  def __len__(self) -> int:
    return self.num_rows

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_rows:
      raise IndexError(f"row {index} out of range [0, {self.num_rows}).")
    example = make_examples(np.random.default_rng((self.seed, int(index))), 1, self.seq_len)
    return {k: v[0] for k, v in example.items()}
