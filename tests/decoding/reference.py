"""A slow, literal model of the original's adaptive decoding, for tests: batch 1, greedy, zero initial state, a
dict KV cache keyed by (cache index, position), token-by-token and step-by-step Python loops, the model's own
pieces for the blocks, NumPy for the cache and attention. It mirrors the semantics of the original (prelude
indices 0..1, core step s layer j at 2 + 4s + j, coda at -1, -2; compress-s/-r remapping; which entries a query
sees when tokens exited early; unmasked attention for one query, causal otherwise) with none of the static-shape
machinery under test.
"""

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from huginn_jax.api import model_from_params


class DictCache:
  def __init__(self, strategy: str):
    self.strategy, self.k, self.v, self.seen = strategy, {}, {}, 0

  def _remap(self, idx: int) -> int:
    if idx > 1 and "compress-" in self.strategy:
      stage = self.strategy.split("compress-")[1]
      if stage.startswith("s"):
        return (idx - 2) % int(stage[1:]) + 2
      if stage == "anchor":
        return idx if idx - 2 < 32 else 34 + (idx - 34) % 4
      return (idx - 2) // int(stage[1:]) + 2
    return idx

  def update(self, k, v, idx: int):
    """Stores k, v [C, H, D] for the newest C positions; returns the keys and values the query attends to."""
    idx = self._remap(idx)
    if idx == 0:
      self.seen += k.shape[0]
    first = self.seen - k.shape[0]
    k, v = np.asarray(k), np.asarray(v)
    for i in range(k.shape[0]):
      self.k.setdefault(idx, {})[first + i] = k[i]
      self.v.setdefault(idx, {})[first + i] = v[i]
    present = sorted(self.k[idx])
    rule = next((r for r in ("latest-m4", "available-m4", "always-last-m4") if self.strategy.startswith(r)), None)
    if len(present) == self.seen or rule is None:
      picks = [(idx, p) for p in present]
    else:  # each position at its latest step of the same core layer (always-last: over all steps it ran)
      picks = []
      for p in range(self.seen):
        if idx >= 2:
          top = max(self.k) if rule == "always-last-m4" else idx
          picks.append((max(s for s in range(2, top + 1) if s % 4 == idx % 4 and p in self.k.get(s, {})), p))
        else:
          picks.append((idx if p in self.k[idx] else 0, p))
    return np.stack([self.k[s][p] for s, p in picks]), np.stack([self.v[s][p] for s, p in picks])


def _attention(q, k, v):
  """q [C, H, D], k/v [T, H, D]; causal aligned to the end when C > 1, unmasked for a single query."""
  q = np.asarray(q)
  c, t = q.shape[0], k.shape[0]
  scores = np.einsum("chd,thd->hct", q, k) / np.float32(math.sqrt(q.shape[-1]))
  if c > 1:
    scores = np.where(np.arange(t)[None, :] <= np.arange(c)[:, None] + (t - c), scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  return np.einsum("hct,thd->chd", probs / probs.sum(-1, keepdims=True), v)


@nnx.jit
def _project(block, x, positions):
  return block.attn.qkv(block.norm_1(x[None]), positions[None])


@nnx.jit
def _finish(block, x, y):
  return block.mlp_part(block.norm_2(x + block.attn.out(y[None])[0])[None])[0]


def _block(block, x, positions, cache, idx):
  q, k, v = _project(block, x, positions)
  keys, values = cache.update(k[0], v[0], idx)
  return _finish(block, x, jnp.asarray(_attention(q[0], keys, values)))


def _head(model, s, positions, cache):
  x = model.ln_f(s)
  for i, block in enumerate(model.coda):
    x = _block(block, x, positions, cache, -1 - i)
  x = model.ln_f(x)
  return np.asarray(x[-1] @ model.wte[...].T, np.float64)


def _log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def adaptive_generate(params, config, prompt, new_tokens: int, max_steps: int, criterion: str, threshold: float,
                      strategy: str = "full", continuous: bool = False):
  """Returns (all tokens, iterations used per new token) of the original's adaptive greedy decoding.

  ``continuous``: each new token starts from the previous token's core state at its exit (before ln_f).
  """
  model = model_from_params(params, config)
  cache, tokens, used, done, warm = DictCache(strategy), list(prompt), [], 0, None
  for _ in range(new_tokens):
    chunk = jnp.asarray(tokens[done:], jnp.int32)
    positions = jnp.arange(done, len(tokens), dtype=jnp.int32)
    x = model.embed(chunk)
    for i, block in enumerate(model.prelude):
      x = _block(block, x, positions, cache, i)
    e, s = x, (jnp.zeros_like(x) if warm is None else warm)
    prev_logp, logits = np.full(config.vocab_size, -np.log(config.vocab_size)), None
    for step in range(max_steps):
      prev = s
      h = model.core.inject(s, e)
      for j, block in enumerate(model.core.layers):
        h = _block(block, h, positions, cache, 2 + 4 * step + j)
      s = h
      if criterion == "kl":
        logits = _head(model, s, positions, cache)
        logp = _log_softmax(logits)
        value = float((np.exp(prev_logp) * (prev_logp - logp)).sum())
        prev_logp = logp
      else:  # latent-diff
        value = float(np.mean(np.linalg.norm(np.asarray(s - prev, np.float64), axis=-1)
                              / np.linalg.norm(np.asarray(s, np.float64), axis=-1)))
      if value < threshold:
        used.append(step + 1)
        break
    else:
      used.append(max_steps)
    if criterion != "kl" or logits is None:
      logits = _head(model, s, positions, cache)
    done = len(tokens)
    warm = s[-1:] if continuous else None
    tokens.append(int(np.argmax(logits)))
  return np.array(tokens), np.array(used)
