"""``HuginnLM``: Huginn behind lm-evaluation-harness's ``LM`` interface (loglikelihood, rolling, generate_until).

Importable without ``lm_eval``: the class subclasses ``lm_eval.api.model.LM`` when that package is installed and a
plain base otherwise, so the adapter can also score local files. Every request has ``.args``: (context,
continuation) for the log-likelihood methods, (text,) for the rolling one, (context, gen_kwargs) for generation.

Scoring runs ``hj.forward`` at ``num_steps`` iterations from a zero initial state (deterministic); rows are right
padded to a multiple of ``pad_multiple`` and batches filled to ``batch_size`` so few shapes get compiled. With an
``exit_criterion`` (adaptive compute) every token exits the recurrence on its own, and with a shared KV ``cache``
(not "full") tokens attend to each other's iteration-shared keys, so scoring then decodes the continuation token by
token through the KV cache instead (``huginn_jax.decoding.score``). Generation runs
``hj.generate`` on up to ``generate_batch_size`` requests at once, grouped by their settings and prompt width.
The core iterations spent on each scored or generated token are tallied per task (``mean_iterations``).

The harness builds the adapter from ``--model_args`` through ``create_from_arg_string`` (see ``from_pretrained``);
``huginn_jax.evaluation.lm_eval_main`` registers it as ``huginn-jax`` (alias ``huginn``).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from huginn_jax import progress as progress_lib

try:  # pragma: no cover - depends on the environment
  from lm_eval.api.model import LM as _Base
except ImportError:
  class _Base:
    """Stand-in for ``lm_eval.api.model.LM`` when lm_eval is not installed."""

    def __init__(self):
      pass

# For the harness's logs and request-cache fingerprint; the text itself is made by ``render_chat``.
CHAT_TEMPLATE = ("{{ '<|begin_text|>' }}{% for m in messages %}{{ '<|begin_header|>' }}"
                 "{{ 'Huginn' if m['role'] == 'assistant' else m['role'] }}{{ '<|end_header|>\n\n' }}"
                 "{{ m['content'] | trim }}{{ '<|end_turn|>' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|begin_header|>Huginn<|end_header|>\n\n' }}{% endif %}")

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


@functools.lru_cache(maxsize=16)
def _jitted_forward(config, num_steps: int):
  """One compiled scorer per (config, iterations), shared by adapters (e.g. one per r in a sweep)."""
  import jax
  from huginn_jax.api import forward
  return jax.jit(functools.partial(forward, config=config, num_steps=num_steps, init_scale=0.0))


def _batch_size_arg(value, default: int) -> int:
  """The harness's --batch_size: an int, or "auto"/"auto:N" (no memory probing here: the default is used)."""
  if value is None or (isinstance(value, str) and value.startswith("auto")):
    return default
  return int(value)


class HuginnLM(_Base):
  """lm-eval model over Huginn params at a fixed number of recurrent iterations (the most, with an exit criterion)."""

  def __init__(self, params, config, tokenizer, *, num_steps: int | None = None, batch_size: int = 8,
               prefix_ids: Sequence[int] = (), max_length: int | None = None, pad_multiple: int = 32,
               stop_ids: Sequence[int] | None = None, progress: bool = False, generate_batch_size: int = 16,
               exit_criterion: str | None = None, exit_threshold: float | None = None, cache: str = "full",
               tokenizer_name: str = "huginn"):
    super().__init__()
    from huginn_jax import config as config_lib
    from huginn_jax.decoding.cache import cache_layout
    from huginn_jax.decoding.exit_criteria import get_criterion
    self.params, self.config, self.tokenizer = params, config, tokenizer
    self.num_steps = config.mean_recurrence if num_steps is None else int(num_steps)
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if generate_batch_size < 1:
      raise ValueError(f"generate_batch_size must be >= 1, got {generate_batch_size}.")
    self.generate_batch_size = int(generate_batch_size)  # each row holds a KV cache: lower it for long prompts
    self.batch_size, self.pad_multiple, self.progress = int(batch_size), max(1, int(pad_multiple)), progress
    self.prefix_ids = [int(i) for i in prefix_ids]  # e.g. the BOS id; conditions an empty context
    self.max_length = config.max_seq_len if max_length is None else int(max_length)
    from huginn_jax.decoding.generate import STOP_IDS
    self.stop_ids = tuple(i for i in (STOP_IDS if stop_ids is None else stop_ids) if i < config.vocab_size)
    if exit_criterion is not None:
      get_criterion(exit_criterion)  # a clear error for an unknown name, before any request runs
    cache_layout(cache, config, self.num_steps)  # likewise for the cache strategy
    self.exit_criterion, self.exit_threshold, self.cache = exit_criterion, exit_threshold, cache
    # An exit rule or a shared KV cache changes what each token computes: score as generation decodes.
    self.token_by_token = exit_criterion is not None or cache != "full"
    self._tokenizer_name = tokenizer_name
    self.iterations: dict[str, list[int]] = {}  # task -> [core iterations summed over tokens, tokens]
    self._forward = _jitted_forward(config_lib.frozen(config), self.num_steps)

  # --- construction from the harness's --model_args ---------------------------------------------------------
  @classmethod
  def from_pretrained(cls, pretrained: str, *, tokenizer: str | None = None, num_steps: int | None = None,
                      mean_recurrence: int | None = None, dtype: str | None = None, batch_size=None,
                      max_batch_size=None, generate_batch_size: int = 16, exit_criterion: str | None = None,
                      exit_threshold: float | None = None, cache: str = "full", add_bos_token: bool = True,
                      max_length: int | None = None, pad_multiple: int = 32, progress: bool = True,
                      device=None, trust_remote_code=None) -> "HuginnLM":
    """Loads a checkpoint (our Orbax directory or an HF directory) and its tokenizer.

    ``num_steps`` (alias ``mean_recurrence``, the original's name): iterations per token, default the config's.
    ``tokenizer``: a tokenizer.json or a directory holding one (default: the checkpoint directory). With
    ``add_bos_token`` every context starts with ``<|begin_text|>`` (when the vocabulary has it). ``device`` and
    ``trust_remote_code`` are accepted so the original's hf recipe carries over; JAX picks the device.
    """
    from huginn_jax.checkpoint.io import load
    from huginn_jax.text.tokenizer import Tokenizer
    if num_steps is not None and mean_recurrence is not None and int(num_steps) != int(mean_recurrence):
      raise ValueError(f"num_steps={num_steps} and mean_recurrence={mean_recurrence} disagree; give one of them.")
    steps = num_steps if num_steps is not None else mean_recurrence
    config, params = load(str(pretrained), dtype=dtype)
    tok = Tokenizer.from_file(tokenizer or pretrained)
    if tok.vocab_size > config.vocab_size:
      raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model only {config.vocab_size}; pass "
                       "the model's tokenizer with tokenizer=PATH in --model_args.")
    prefix = [tok.bos_id] if add_bos_token and tok.bos_id is not None else []
    size = _batch_size_arg(batch_size, 8)
    if max_batch_size is not None:
      size = min(size, int(max_batch_size))
    return cls(params, config, tok, num_steps=steps, batch_size=size, prefix_ids=prefix, max_length=max_length,
               pad_multiple=pad_multiple, stop_ids=tok.stop_ids, progress=bool(progress),
               generate_batch_size=int(generate_batch_size), exit_criterion=exit_criterion,
               exit_threshold=None if exit_threshold is None else float(exit_threshold), cache=str(cache),
               tokenizer_name=str(tokenizer or pretrained))

  @classmethod
  def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "HuginnLM":
    """``--model_args`` as a dict, plus the harness's batch_size / max_batch_size / device (None = not given)."""
    import inspect
    args = dict(arg_dict)
    args.update({k: v for k, v in (additional_config or {}).items() if v is not None})
    accepted = set(inspect.signature(cls.from_pretrained).parameters)
    unknown = sorted(set(args) - accepted)
    if unknown:
      raise ValueError(f"unknown --model_args {unknown} for huginn-jax; accepted: {', '.join(sorted(accepted))}.")
    if "pretrained" not in args:
      raise ValueError("--model_args needs pretrained=PATH (our Orbax directory or an HF checkpoint directory).")
    return cls.from_pretrained(**args)

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "HuginnLM":
    """``--model_args pretrained=PATH,num_steps=32,...`` (values typed as the harness types them)."""
    from lm_eval.utils import simple_parse_args_string
    return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

  # --- chat template (--apply_chat_template) ----------------------------------------------------------------
  @property
  def tokenizer_name(self) -> str:
    return self._tokenizer_name

  def chat_template(self, chat_template: bool | str = False) -> str | None:
    return CHAT_TEMPLATE if chat_template else None

  def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
    """Huginn's chat text (BOS, headers, end-of-turn tokens) of the few-shot / system / user messages."""
    from huginn_jax.text.tokenizer import render_chat
    return render_chat(chat_history, add_generation_prompt)

  # --- iterations spent, per task ---------------------------------------------------------------------------
  def _tally(self, request, steps) -> None:
    task = getattr(request, "task_name", None) or "all"
    total = self.iterations.setdefault(task, [0, 0])
    steps = np.asarray(steps).reshape(-1)
    total[0] += int(steps.sum())
    total[1] += int(steps.size)

  def mean_iterations(self) -> dict[str, float]:
    """Core iterations per scored or generated token, by task (``num_steps`` everywhere without an exit rule)."""
    return {task: s / n for task, (s, n) in self.iterations.items() if n}

  def get_model_info(self) -> dict:
    """Written by the harness into the results' ``config`` (after the requests have run)."""
    return {"huginn_num_steps": self.num_steps, "huginn_exit_criterion": self.exit_criterion,
            "huginn_exit_threshold": self.exit_threshold, "huginn_cache": self.cache,
            "huginn_mean_iterations": self.mean_iterations()}

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

  def _sequential_logprobs(self, pairs: list[tuple[list[int], list[int]]]):
    """Per (context ids, continuation ids): (log-probs [k], greedy flags [k], iterations [k]) of the continuation,
    decoded token by token with the exit criterion. Batches of ``batch_size``, widths rounded up to few shapes."""
    from huginn_jax.decoding.score import score_continuations
    out = []
    limit = self.config.max_seq_len
    for start in self._batches(len(pairs)):
      chunk = pairs[start:start + self.batch_size]
      longest_ctx, longest_cont = max(len(c) for c, _ in chunk), max(len(t) for _, t in chunk)
      if len(chunk) > 1 and longest_ctx + longest_cont > limit:  # rows fit alone, not padded together
        out.extend(self._sequential_logprobs_rows(chunk))
        continue
      n = max(min(_pow2_at_least(max(longest_cont, 4)), limit - longest_ctx), longest_cont)  # >= 4: few shapes
      width = max(min(-(-longest_ctx // self.pad_multiple) * self.pad_multiple, limit - n), longest_ctx)
      filled = chunk + chunk[:1] * (self.batch_size - len(chunk))
      scores = score_continuations(
          self.params, _right_padded([c for c, _ in filled], len(filled), width), [len(c) for c, _ in filled],
          _right_padded([t for _, t in filled], len(filled), n), [len(t) for _, t in filled], config=self.config,
          num_steps=self.num_steps, cache=self.cache, exit_criterion=self.exit_criterion,
          exit_threshold=self.exit_threshold)
      lp, greedy, steps = (np.asarray(a) for a in scores)
      out.extend((lp[b, :len(t)], greedy[b, :len(t)], steps[b, :len(t)]) for b, (_, t) in enumerate(chunk))
    return out

  def _sequential_logprobs_rows(self, pairs):
    size, self.batch_size = self.batch_size, 1
    try:
      return [self._sequential_logprobs([pair])[0] for pair in pairs]
    finally:
      self.batch_size = size

  def _batches(self, n: int):
    return progress_lib.progress(range(0, n, self.batch_size), desc=f"huginn r={self.num_steps}", unit="batch",
                                 enabled=self.progress)

  def _context_ids(self, context: str) -> list[int]:
    """``prefix_ids`` + the context's ids (no second prefix when the text starts with it, e.g. a chat prompt);
    an error when there is nothing to condition the first token on."""
    ids = _ids(self.tokenizer, context)
    if ids[:len(self.prefix_ids)] != self.prefix_ids:
      ids = self.prefix_ids + ids
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
    if len(cont) >= self.max_length:
      raise ValueError(f"A continuation of {len(cont)} tokens leaves no room for its context in max_length="
                       f"{self.max_length}.")
    whole = (ctx + cont)[-self.max_length:]  # left-truncate long contexts
    return whole, cont

  def loglikelihood(self, requests) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether every continuation token is the greedy argmax)."""
    pairs = [self._pair_ids(*req.args) for req in requests]
    results = []
    if self.token_by_token:
      scored = self._sequential_logprobs([(whole[:-len(cont)], cont) for whole, cont in pairs])
      for req, (lp, greedy, steps) in zip(requests, scored):
        self._tally(req, steps)
        results.append((float(lp.sum()), bool(greedy.all())))
      return results
    scored = self._token_logprobs([whole for whole, _ in pairs])
    for req, (whole, cont), (lp, greedy) in zip(requests, pairs, scored):
      k = len(cont)
      self._tally(req, np.full(k, self.num_steps))
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
    if self.token_by_token:
      scored = self._sequential_logprobs([(row[:1], row[1:]) for row in rows])
    else:
      scored = [(lp, greedy, np.full(len(lp), self.num_steps)) for lp, greedy in self._token_logprobs(rows)]
    for owner, (lp, _, steps) in zip(owners, scored):
      totals[owner] += float(lp.sum())
      self._tally(requests[owner], steps)
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
    batches = progress_lib.progress(batches, desc=f"huginn generate r={self.num_steps}", unit="batch",
                                    enabled=self.progress)
    results = [""] * len(requests)
    for (max_new, temperature, width), rows in batches:
      filled = rows + rows[:1] * (min(_pow2_at_least(len(rows)), size) - len(rows))
      lengths = np.array([len(prompts[i]) for i in filled], np.int32)
      batch = _right_padded([prompts[i] for i in filled], len(filled), width)
      out = generate(self.params, batch, prompt_lengths=lengths, config=self.config, max_new_tokens=max_new,
                        num_steps=self.num_steps, init_scale=0.0, temperature=temperature, key=jax.random.key(0),
                        stop_ids=self.stop_ids, cache=self.cache, exit_criterion=self.exit_criterion,
                        exit_threshold=self.exit_threshold)
      tokens, counts, steps = np.asarray(out.tokens), np.asarray(out.num_generated), np.asarray(out.steps)
      for b, i in enumerate(rows):
        self._tally(requests[i], steps[b, :counts[b]])
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
