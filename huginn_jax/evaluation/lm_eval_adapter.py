"""``HuginnLM``: Huginn behind lm-evaluation-harness's ``LM`` interface (loglikelihood, rolling, generate_until).

Importable without ``lm_eval``: the class subclasses ``lm_eval.api.model.LM`` when that package is installed and a
plain base otherwise, so the adapter can also score local files. Every request has ``.args``: (context,
continuation) for the log-likelihood methods, (text,) for the rolling one, (context, gen_kwargs) for generation.
Scoring runs ``hj.forward`` at ``num_steps`` iterations from a zero initial state (deterministic); rows are right
padded to a multiple of ``pad_multiple`` and batches filled to ``batch_size`` so few shapes get compiled. Generation
runs ``hj.generate`` on up to ``generate_batch_size`` requests at once, grouped by their settings and prompt width.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

try:  # pragma: no cover - depends on the environment
  from lm_eval.api.model import LM as _Base
except ImportError:
  class _Base:
    """Stand-in for ``lm_eval.api.model.LM`` when lm_eval is not installed."""

    def __init__(self):
      pass


def _ids(tokenizer, text: str) -> list[int]:
  """Token ids from a ``tokenizers.Tokenizer`` (returns an Encoding) or a wrapper returning a list."""
  enc = tokenizer.encode(text)
  return list(enc.ids) if hasattr(enc, "ids") else list(enc)


def _decode(tokenizer, ids: Sequence[int]) -> str:
  return tokenizer.decode([int(i) for i in ids])


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, n - 1).bit_length()


def _right_padded(rows: Sequence[Sequence[int]], n_rows: int, width: int) -> np.ndarray:
  """int32 [n_rows, width]: each row of ids at the start of its line, zeros after (and in lines past the rows)."""
  batch = np.zeros((n_rows, width), np.int32)
  for b, r in enumerate(rows):
    batch[b, :len(r)] = r
  return batch


class HuginnLM(_Base):
  """lm-eval model over Huginn params at a fixed number of recurrent iterations."""

  def __init__(self, params, config, tokenizer, *, num_steps: int | None = None, batch_size: int = 8,
               prefix_ids: Sequence[int] = (), max_length: int | None = None, pad_multiple: int = 32,
               stop_ids: Sequence[int] | None = None, progress: bool = False, generate_batch_size: int = 16):
    super().__init__()
    import jax
    from huginn_jax.api import forward
    self.params, self.config, self.tokenizer = params, config, tokenizer
    self.num_steps = config.mean_recurrence if num_steps is None else int(num_steps)
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if generate_batch_size < 1:
      raise ValueError(f"generate_batch_size must be >= 1, got {generate_batch_size}.")
    self.generate_batch_size = int(generate_batch_size)  # each row holds a KV cache: lower it for long prompts
    self.batch_size, self.pad_multiple, self.progress = batch_size, max(1, pad_multiple), progress
    self.prefix_ids = [int(i) for i in prefix_ids]  # e.g. the BOS id; conditions an empty context
    self.max_length = config.max_seq_len if max_length is None else max_length
    from huginn_jax.decoding.generate import STOP_IDS
    self.stop_ids = tuple(i for i in (STOP_IDS if stop_ids is None else stop_ids) if i < config.vocab_size)
    self._forward = jax.jit(functools.partial(forward, config=config, num_steps=self.num_steps, init_scale=0.0))

  # --- scoring -----------------------------------------------------------------------------------------------
  def _token_logprobs(self, rows: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row of ids: (log-prob of each token given the previous ones [n-1], greedy-argmax flags [n-1])."""
    import jax
    import jax.numpy as jnp
    out = []
    for start in self._batches(len(rows)):
      chunk = rows[start:start + self.batch_size]
      width = -(-max(len(r) for r in chunk) // self.pad_multiple) * self.pad_multiple
      width = min(width, self.max_length)
      logits = self._forward(self.params, jnp.asarray(_right_padded(chunk, self.batch_size, width))).logits
      logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
      for b, r in enumerate(chunk):
        n = len(r)
        target = np.asarray(r[1:])
        lp = logp[b, :n - 1]
        out.append((np.take_along_axis(lp, target[:, None], axis=-1)[:, 0], lp.argmax(-1) == target))
    return out

  def _batches(self, n: int):
    starts = range(0, n, self.batch_size)
    if self.progress:
      from tqdm import tqdm
      starts = tqdm(starts, desc=f"huginn r={self.num_steps}")
    return starts

  def _context_ids(self, context: str) -> list[int]:
    """``prefix_ids`` + the context's ids; an error when there is nothing to condition the first token on."""
    ids = self.prefix_ids + _ids(self.tokenizer, context)
    if not ids:
      raise ValueError("An empty context needs prefix_ids (e.g. the BOS id) to condition the first token.")
    return ids

  def _pair_ids(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    # Trailing spaces of the context belong to the continuation (lm-eval's convention).
    stripped = context.rstrip(" ")
    continuation = context[len(stripped):] + continuation
    ctx = self._context_ids(stripped)
    cont = _ids(self.tokenizer, continuation)
    if not cont:
      raise ValueError(f"The continuation {continuation!r} encodes to no tokens.")
    whole = (ctx + cont)[-self.max_length:]  # left-truncate long contexts
    return whole, cont

  def loglikelihood(self, requests) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether every continuation token is the greedy argmax)."""
    pairs = [self._pair_ids(*req.args) for req in requests]
    scored = self._token_logprobs([whole for whole, _ in pairs])
    results = []
    for (whole, cont), (lp, greedy) in zip(pairs, scored):
      k = len(cont)
      results.append((float(lp[-k:].sum()), bool(greedy[-k:].all())))
    return results

  def loglikelihood_rolling(self, requests) -> list[float]:
    """Log-likelihood of whole texts, in windows of ``max_length`` that overlap by one token."""
    rows, owners = [], []
    for i, req in enumerate(requests):
      ids = self.prefix_ids + _ids(self.tokenizer, req.args[0])
      if len(ids) < 2:
        raise ValueError("loglikelihood_rolling needs at least two tokens (set prefix_ids to the BOS id).")
      start = 0
      while start < len(ids) - 1:
        rows.append(ids[start:start + self.max_length])
        owners.append(i)
        start += self.max_length - 1
    totals = [0.0] * len(requests)
    for owner, (lp, _) in zip(owners, self._token_logprobs(rows)):
      totals[owner] += float(lp.sum())
    return totals

  # --- generation --------------------------------------------------------------------------------------------
  def generate_until(self, requests) -> list[str]:
    """Greedy (or sampled, with ``temperature`` > 0) text after each context, cut at the first ``until`` string.

    Requests sharing ``max_gen_toks``, temperature and prompt width rounded up to a power of two run together,
    ``generate_batch_size`` at a time (a short last batch is filled up to a power of two by repeating a row), so few
    programs get compiled. Rows decode independently, so greedy text equals running each request alone; sampled text
    draws from one key per batch instead of one per request.
    """
    import jax
    from huginn_jax.decoding.generate import generate
    prompts, stops, groups = [], [], {}
    for i, req in enumerate(requests):
      context, gen_kwargs = req.args
      gen_kwargs = dict(gen_kwargs or {})
      until = gen_kwargs.pop("until", None) or []
      stops.append([until] if isinstance(until, str) else list(until))
      max_new = int(gen_kwargs.pop("max_gen_toks", 256))
      temperature = float(gen_kwargs.pop("temperature", 0.0)) if gen_kwargs.pop("do_sample", True) else 0.0
      if not 0 < max_new < self.max_length:
        raise ValueError(f"max_gen_toks={max_new} leaves no room for the context in max_length={self.max_length}; "
                         "ask for fewer new tokens or raise max_length.")
      ids = self._context_ids(context)[-(self.max_length - max_new):]
      prompts.append(ids)
      room = min(self.max_length, self.config.max_seq_len) - max_new  # the padded width must still fit
      width = max(min(_pow2_at_least(len(ids)), room), len(ids))
      groups.setdefault((max_new, temperature, width), []).append(i)

    size = self.generate_batch_size
    batches = [(key, rows[s:s + size]) for key, rows in groups.items() for s in range(0, len(rows), size)]
    if self.progress:
      from tqdm import tqdm
      batches = tqdm(batches, desc=f"huginn generate r={self.num_steps}")
    results = [""] * len(requests)
    for (max_new, temperature, width), rows in batches:
      filled = rows + rows[:1] * (min(_pow2_at_least(len(rows)), size) - len(rows))
      lengths = np.array([len(prompts[i]) for i in filled], np.int32)
      batch = _right_padded([prompts[i] for i in filled], len(filled), width)
      out = generate(self.params, batch, prompt_lengths=lengths, config=self.config, max_new_tokens=max_new,
                        num_steps=self.num_steps, init_scale=0.0, temperature=temperature, key=jax.random.key(0),
                        stop_ids=self.stop_ids)
      tokens, counts = np.asarray(out.tokens), np.asarray(out.num_generated)
      for b, i in enumerate(rows):
        new = [t for t in tokens[b, :counts[b]].tolist() if t not in self.stop_ids]
        results[i] = cut_at_stop(_decode(self.tokenizer, new), stops[i])
    return results


def cut_at_stop(text: str, until: Sequence[str]) -> str:
  """``text`` up to the earliest occurrence of any stop string."""
  cut = len(text)
  for stop in until:
    if stop:
      at = text.find(stop)
      if at >= 0:
        cut = min(cut, at)
  return text[:cut]
