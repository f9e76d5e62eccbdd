"""Running parity and its chained form: at every position, the XOR of the bits along a chain back to the start.

Running parity (``max_hop=1``): position t emits the XOR of bits 0..t, a chain of t XORs, so later positions are
harder (the prefix-sum task of "Can You Learn an Algorithm?", Schwarzschild et al., 2021). A transformer can
shortcut it by counting the ones (parity is a count mod 2), and a one-pass 4-layer model does so well enough to
leave little room for recurrence.

Chained parity (``max_hop=H > 1``): each token carries a bit and a hop h in 1..H; the label of position t is its
bit XOR the label of position t - h (the start, or nothing before position 0, counts as 0). The positions on a
chain are set by the data, not by the order, so counting does not help: a model needs one attention lookup per
link, and the number of links (``hops``, returned with the examples) is the difficulty. A depth-recurrent model can
follow one link or more per iteration, so more iterations resolve longer chains, also longer than any in training.

Tokens: ``2 * (h - 1) + bit`` (0 and 1 for running parity), and optionally a start token (``start_token(H)``,
the next id) before the bits: a fixed first position that attention can rest on, so the first bit is read like
every other bit (without it a model tends to use position 0 as that resting place and misreads its bit).
"""

from __future__ import annotations

import numpy as np

from huginn_jax.api import IGNORE_INDEX


START = 2  # running parity's start token (``start_token(1)``)


def start_token(max_hop: int = 1) -> int:
  """The start token's id: the first id after the 2 * max_hop (hop, bit) tokens."""
  return 2 * max_hop


def vocab_size(max_hop: int = 1) -> int:
  """Ids a model needs for the bits, hops and the start token."""
  return start_token(max_hop) + 1


def make_examples(rng: np.random.Generator, batch: int, seq_len: int, *, start_token: int | None = None,
                  max_hop: int = 1) -> dict[str, np.ndarray]:
  """``inputs`` [batch, seq_len], ``labels`` (the chained parity) and ``hops`` (links from each position back to
  the start; 0 at the start token), all int32. With ``start_token``, the first of the seq_len positions holds it
  (label -100) and seq_len - 1 bits follow. Hops are drawn uniformly in 1..min(max_hop, t + 1) at bit t."""
  if max_hop < 1:
    raise ValueError(f"max_hop must be >= 1, got {max_hop}.")
  num_bits = seq_len - (start_token is not None)
  if num_bits < 1:
    raise ValueError(f"seq_len {seq_len} leaves no bits after the start token.")
  bits = rng.integers(0, 2, (batch, num_bits), dtype=np.int32)
  if max_hop == 1:  # running parity (the same draws as before hops existed)
    step = np.ones_like(bits)
    labels = (np.cumsum(bits, axis=1) % 2).astype(np.int32)
    hops = np.broadcast_to(np.arange(1, num_bits + 1, dtype=np.int32), bits.shape).copy()
  else:
    reach = np.minimum(np.arange(num_bits) + 1, max_hop)  # a hop never lands before the start
    step = (np.floor(rng.random((batch, num_bits)) * reach) + 1).astype(np.int32)
    labels, hops = _follow_chains(bits, step)
  tokens = (2 * (step - 1) + bits).astype(np.int32)
  if start_token is None:
    return {"inputs": tokens, "labels": labels, "hops": hops}
  column = lambda value: np.full((batch, 1), value, np.int32)
  return {"inputs": np.concatenate([column(start_token), tokens], axis=1),
          "labels": np.concatenate([column(IGNORE_INDEX), labels], axis=1),
          "hops": np.concatenate([column(0), hops], axis=1)}


def _follow_chains(bits: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(labels, hops) [batch, bits] of chained parity: label t = bit t XOR label (t - step t), the start counting as
  0; hops t = links from t back to the start. Plain Python over each row's positions: a data source builds one row
  at a time, for which this is five times faster than numpy over the batch (the main job's data loading took a
  quarter of its step time), and a batch of test strings takes milliseconds."""
  labels, hops = np.zeros_like(bits), np.zeros_like(bits)
  for row, (row_bits, row_step) in enumerate(zip(bits.tolist(), step.tolist())):
    row_labels, row_hops = [], []
    for t, (bit, back) in enumerate(zip(row_bits, row_step)):
      prev = t - back  # -1: the start
      row_labels.append(bit ^ (row_labels[prev] if prev >= 0 else 0))
      row_hops.append(1 + (row_hops[prev] if prev >= 0 else 0))
    labels[row], hops[row] = row_labels, row_hops
  return labels, hops


class RunningParitySource:
  """A random-access (grain) source of ``num_rows`` examples of (chained) running parity; row i is a pure
  function of (seed, i).

  A difficulty curriculum: with ``curriculum_rows`` > 0, row i labels only the positions whose chain has at most
  ``start_links + (bits - start_links) * i / curriculum_rows`` links (the rest get -100, no loss), so a model
  learns the short chains first; for running parity that is a length curriculum (the first positions). Read the
  rows in order (``data.shuffle = False``) to make it a curriculum over train steps. Causal attention means the
  unlabelled positions never change the labelled positions' predictions.
  """

  def __init__(self, num_rows: int, seq_len: int, seed: int = 0, *, curriculum_rows: int = 0, start_links: int = 1,
               start_token: int | None = None, max_hop: int = 1):
    if num_rows <= 0 or seq_len <= 0:
      raise ValueError(f"num_rows and seq_len must be positive, got {num_rows} and {seq_len}.")
    self.num_bits = seq_len - (start_token is not None)
    if curriculum_rows < 0 or not 1 <= start_links <= max(self.num_bits, 1):
      raise ValueError(f"curriculum_rows must be >= 0 and start_links in [1, {self.num_bits}] (the bits of a row), "
                       f"got {curriculum_rows} and {start_links}.")
    if max_hop < 1:
      raise ValueError(f"max_hop must be >= 1, got {max_hop}.")
    self.num_rows, self.seq_len, self.seed = num_rows, seq_len, seed
    self.curriculum_rows, self.start_links, self.start_token = curriculum_rows, start_links, start_token
    self.max_hop = max_hop

  def labelled_links(self, index: int) -> int:
    """The longest chain that row ``index`` labels."""
    if index >= self.curriculum_rows:
      return self.num_bits
    return self.start_links + (self.num_bits - self.start_links) * index // self.curriculum_rows

  def __len__(self) -> int:
    return self.num_rows

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_rows:
      raise IndexError(f"row {index} out of range [0, {self.num_rows}).")
    example = make_examples(np.random.default_rng((self.seed, int(index))), 1, self.seq_len,
                            start_token=self.start_token, max_hop=self.max_hop)
    labels = np.where(example["hops"][0] <= self.labelled_links(index), example["labels"][0], IGNORE_INDEX)
    return {"inputs": example["inputs"][0], "labels": labels.astype(np.int32)}
