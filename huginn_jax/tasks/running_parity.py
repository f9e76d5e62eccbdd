"""Running parity: read a bit string and emit, at every position t, the XOR of bits 0..t.

Position t depends on every earlier bit through a chain of t XORs, so later positions are harder: a model that
propagates one step of the chain per unit of depth needs depth growing with t. This is the prefix-sum task of
"Can You Learn an Algorithm?" (Schwarzschild et al., 2021), the classic probe of recurrent-depth extrapolation.
Tokens: 0 and 1, and optionally a start token (``START``) before the bits: a fixed first position that attention
can rest on, so that the first bit is read like every other bit (without it a model tends to treat position 0 as
that resting place and gets the XOR of the first two bits wrong).
"""

from __future__ import annotations

import numpy as np

from huginn_jax.api import IGNORE_INDEX


START = 2  # the start token's id (the demo model's vocabulary has 4 ids)


def make_examples(rng: np.random.Generator, batch: int, seq_len: int, *,
                  start_token: int | None = None) -> dict[str, np.ndarray]:
  """``inputs`` bits [batch, seq_len] and ``labels`` their running parity, both int32. With ``start_token``, the
  first of the seq_len positions holds it (label -100) and seq_len - 1 bits follow."""
  num_bits = seq_len - (start_token is not None)
  if num_bits < 1:
    raise ValueError(f"seq_len {seq_len} leaves no bits after the start token.")
  bits = rng.integers(0, 2, (batch, num_bits), dtype=np.int32)
  labels = (np.cumsum(bits, axis=1) % 2).astype(np.int32)
  if start_token is None:
    return {"inputs": bits, "labels": labels}
  column = lambda value: np.full((batch, 1), value, np.int32)
  return {"inputs": np.concatenate([column(start_token), bits], axis=1),
          "labels": np.concatenate([column(IGNORE_INDEX), labels], axis=1)}


class RunningParitySource:
  """A random-access (grain) source of ``num_rows`` examples; row i is a pure function of (seed, i).

  A length curriculum: with ``curriculum_rows`` > 0, row i labels only its first
  ``start_len + (seq_len - start_len) * i / curriculum_rows`` positions (the rest get -100, no loss), so a model
  learns the short chains first; read the rows in order (``data.shuffle = False``) to make it a curriculum over
  train steps. Causal attention means the unlabelled tail never changes the labelled positions' predictions.
  """

  def __init__(self, num_rows: int, seq_len: int, seed: int = 0, *, curriculum_rows: int = 0, start_len: int = 1,
               start_token: int | None = None):
    if num_rows <= 0 or seq_len <= 0:
      raise ValueError(f"num_rows and seq_len must be positive, got {num_rows} and {seq_len}.")
    if curriculum_rows < 0 or not 1 <= start_len <= seq_len:
      raise ValueError(f"curriculum_rows must be >= 0 and start_len in [1, seq_len={seq_len}], got "
                       f"{curriculum_rows} and {start_len}.")
    self.num_rows, self.seq_len, self.seed = num_rows, seq_len, seed
    self.curriculum_rows, self.start_len, self.start_token = curriculum_rows, start_len, start_token

  def labelled_length(self, index: int) -> int:
    """How many leading positions of row ``index`` carry a label."""
    if index >= self.curriculum_rows:
      return self.seq_len
    return self.start_len + (self.seq_len - self.start_len) * index // self.curriculum_rows

  def __len__(self) -> int:
    return self.num_rows

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_rows:
      raise IndexError(f"row {index} out of range [0, {self.num_rows}).")
    example = {k: v[0] for k, v in make_examples(np.random.default_rng((self.seed, int(index))), 1, self.seq_len,
                                                  start_token=self.start_token).items()}
    example["labels"][self.labelled_length(index):] = IGNORE_INDEX
    return example
