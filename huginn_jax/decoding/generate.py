"""``hj.generate``: batched decoding as one jitted program (prefill + ``lax.while_loop`` over new tokens).

The prompt is one chunk through the model that fills the cache; every new token is a one-token chunk inside a
while loop that stops when all rows have hit a stop id or ``max_new_tokens``. Settings that change shapes or
control flow (recurrence, cache strategy, exit criterion, filters on/off) are static; values that do not
(thresholds, temperature, top-p, min-p, penalty, stop ids, the key, the prompt) are traced, so repeated calls with
the same shapes and settings reuse one compilation.

Prompts are right-padded: row b holds its prompt in ``prompt_ids[b, :length_b]``; its new tokens take positions
length_b, length_b + 1, ... so rows of different lengths decode side by side.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from huginn_jax import config as config_lib
from huginn_jax.api import model_from_params
from huginn_jax.decoding import cache as cache_lib
from huginn_jax.decoding import sampling
from huginn_jax.decoding.chunk import run_chunk
from huginn_jax.decoding.exit_criteria import get_criterion
from huginn_jax.decoding.speculative import SpecState, speculative_loop
from huginn_jax.model import cast_weights

Array = jax.Array

STOP_IDS = (65504, 65505, 65508)  # <|begin_text|>, <|end_text|>, <|end_turn|>
PAD_ID = 65509


class GenerationOutput(NamedTuple):
  sequences: Array  # [B, S + N] each row: its prompt, its new tokens, then pad_id
  tokens: Array  # [B, N] new tokens; pad_id after a row's stop token
  steps: Array  # [B, N] core iterations behind each new token (0 where none; draft_steps for relaxed-accepted drafts)
  num_generated: Array  # [B] new tokens per row, the stop token included


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
  """Everything static about a generation; one compilation per distinct spec and shapes."""

  layout: cache_lib.CacheLayout
  num_steps: int
  max_new_tokens: int
  max_len: int
  criterion: str | None
  continuous: bool
  init_scale: float
  sampling: sampling.SamplingSpec
  pad_id: int
  draft_steps: int | None
  lookahead: int | None
  relaxed_verification: bool
  cache_dtype: str
  stream: bool


class DecodeState(NamedTuple):
  """The carry of the token-by-token loop (the speculative loop's is ``SpecState``)."""

  index: Array  # scalar int32: the next new token's index
  tokens: Array  # [B, N] new tokens so far (pad beyond count)
  steps: Array  # [B, N] core iterations behind each
  count: Array  # [B] new tokens per row so far
  last: Array  # [B] the last new token, not yet run through the model
  pos: Array  # [B] its position
  done: Array  # [B] rows that produced a stop id
  cache: cache_lib.KVCache
  warm: Array  # [B, 1, d] the previous token's final state (continuous compute)
  seen: Array | None  # [B, V] token ids seen (repetition penalty) or None


class DecodeArgs(NamedTuple):
  exit_threshold: Array
  sampling: sampling.SamplingParams
  stop_ids: Array  # [n] int32; traced, so changing them does not recompile
  sink: Array  # int32 id of the host callback that receives streamed tokens
  verification_threshold: Array


def prepare_prompt(prompt_ids, prompt_lengths, pad_id: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded int32 prompts [B, S] and their lengths [B], from an array or a list of token lists."""
  if isinstance(prompt_ids, (list, tuple)) and prompt_ids and isinstance(prompt_ids[0], (list, tuple, np.ndarray)):
    rows = [np.asarray(r, np.int64).reshape(-1) for r in prompt_ids]
    width = max(len(r) for r in rows)
    prompt = np.full((len(rows), width), pad_id, np.int64)
    for b, r in enumerate(rows):
      prompt[b, :len(r)] = r
    lengths = np.array([len(r) for r in rows]) if prompt_lengths is None else np.asarray(prompt_lengths)
  else:
    prompt = np.asarray(prompt_ids)
    if prompt.ndim == 1:
      prompt = prompt[None]
    if prompt.ndim != 2 or not np.issubdtype(prompt.dtype, np.integer):
      raise ValueError(f"prompt_ids must be integer token ids [batch, seq] (or a list of lists), got shape "
                       f"{prompt.shape} dtype {prompt.dtype}.")
    if prompt_lengths is None:  # trailing pad_id tokens are padding
      real = prompt != pad_id
      lengths = np.where(real.any(1), prompt.shape[1] - np.argmax(real[:, ::-1], axis=1), 0)
    else:
      lengths = np.asarray(prompt_lengths)
  lengths = lengths.astype(np.int32).reshape(-1)
  if lengths.shape != (prompt.shape[0],):
    raise ValueError(f"prompt_lengths must have one entry per row ({prompt.shape[0]}), got shape {lengths.shape}.")
  if np.any(lengths < 1) or np.any(lengths > prompt.shape[1]):
    raise ValueError(f"every prompt needs between 1 and {prompt.shape[1]} tokens, got lengths {lengths.tolist()}; "
                     "drop empty prompts or start them with the BOS token.")
  real = np.arange(prompt.shape[1])[None] < lengths[:, None]
  outside = real & ((prompt < 0) | (prompt >= vocab_size))
  if np.any(outside):
    bad = prompt[outside]
    raise ValueError(f"prompt token id {int(bad[0])} is outside the vocabulary [0, {vocab_size}); check the "
                     "tokenizer matches the model.")
  return np.where(real, prompt, 0).astype(np.int32), lengths


_SINKS: dict[int, Callable] = {}  # host callbacks of the generations running now, by id
_NEXT_SINK = itertools.count()


def _to_sink(sink, tokens, counts):
  _SINKS[int(sink)](np.asarray(tokens), np.asarray(counts))


def _stream_emitter(enabled: bool, sink: Array):
  """An ordered io_callback usable inside the loop, sending (new_tokens [B, K], num_new [B]) to the host sink.

  The callback is one fixed function and the sink id a traced value, so a new callback does not recompile.
  """
  if not enabled:
    return None

  def emit(tokens, counts):
    jax.experimental.io_callback(_to_sink, None, sink, tokens, counts, ordered=True)
  return emit


def is_stop(tokens: Array, stop_ids: Array) -> Array:
  return jnp.any(tokens[..., None] == stop_ids, axis=-1)


def _at(x: Array, index: Array) -> Array:
  """x [B, C, d] at index[b] -> [B, 1, d]."""
  return jnp.take_along_axis(x, index[:, None, None], axis=1)


def _generate_impl(params, prompt: Array, lengths: Array, key: Array | None, args: DecodeArgs, *,
                   config: ml_collections.FrozenConfigDict, spec: DecodeSpec) -> GenerationOutput:
  # Weights in the compute dtype once, not at every use inside the token loop (f32 weights would be read 32x/token).
  model = model_from_params(cast_weights(params, config.compute_dtype), config)
  batch, prompt_len = prompt.shape
  n_new, pad = spec.max_new_tokens, spec.pad_id
  key = jax.random.key(0) if key is None else key
  k_init, k_sample = jax.random.split(key)
  criterion = get_criterion(spec.criterion) if spec.criterion else None
  emit = _stream_emitter(spec.stream, args.sink)

  def choose(logits, k, seen):
    return sampling.next_token(logits, k, spec.sampling, args.sampling, seen)

  def warm_start(out, index):  # the original seeds continuous compute after ln_f, or pre-ln_f when adaptive
    return _at(out.state if criterion is not None else out.latents, index)

  cache = cache_lib.init_cache(spec.layout, config, batch, spec.max_len, spec.cache_dtype)
  valid = jnp.arange(prompt_len)[None] < lengths[:, None]
  seen = sampling.init_history(spec.sampling, prompt, valid, config.vocab_size, spec.max_len)  # None: no penalty
  everyone = jnp.ones((batch,), bool)
  out = run_chunk(model, spec.layout, cache, prompt, jnp.zeros((batch,), jnp.int32), num_steps=spec.num_steps,
                  active=everyone, valid=valid, last=lengths - 1, key=jax.random.fold_in(k_init, 0),
                  init_scale=spec.init_scale, criterion=criterion, threshold=args.exit_threshold)
  first = choose(out.logits, jax.random.fold_in(k_sample, 0), seen)
  if seen is not None:
    seen = sampling.mark_seen(seen, first[:, None])
  if emit is not None:
    emit(first[:, None], jnp.ones((batch,), jnp.int32))
  done = is_stop(first, args.stop_ids) | (n_new <= 1)

  if spec.draft_steps is not None:
    tokens = jnp.full((batch, n_new + spec.lookahead), pad, jnp.int32).at[:, 0].set(first)
    steps = jnp.zeros((batch, n_new + spec.lookahead), jnp.int32).at[:, 0].set(out.steps)
    state = SpecState(jnp.int32(0), tokens, steps, jnp.ones((batch,), jnp.int32), first, lengths, done, out.cache,
                      seen)
    state = speculative_loop(model, spec.layout, state, jax.random.fold_in(key, 1), num_steps=spec.num_steps,
                             draft_steps=spec.draft_steps, lookahead=spec.lookahead, max_new_tokens=n_new,
                             init_scale=spec.init_scale, choose=choose, stop_ids=args.stop_ids, pad_id=pad,
                             emit=emit, verification_threshold=(
                                 args.verification_threshold if spec.relaxed_verification else None))
    count = jnp.minimum(state.count, n_new)
    tokens = jnp.where(jnp.arange(n_new)[None] < count[:, None], state.tokens[:, :n_new], pad)
    steps = jnp.where(jnp.arange(n_new)[None] < count[:, None], state.steps[:, :n_new], 0)
  else:
    tokens = jnp.full((batch, n_new), pad, jnp.int32).at[:, 0].set(first)
    steps = jnp.zeros((batch, n_new), jnp.int32).at[:, 0].set(out.steps)
    state = DecodeState(jnp.int32(1), tokens, steps, jnp.ones((batch,), jnp.int32), first, lengths, done, out.cache,
                        warm_start(out, lengths - 1), seen)

    def cond(st: DecodeState):
      return (st.index < n_new) & ~jnp.all(st.done)

    def body(st: DecodeState):
      active = ~st.done
      out = run_chunk(model, spec.layout, st.cache, st.last[:, None], st.pos, num_steps=spec.num_steps,
                      active=active, init_state=st.warm if spec.continuous else None,
                      key=jax.random.fold_in(k_init, st.index), init_scale=spec.init_scale, criterion=criterion,
                      threshold=args.exit_threshold)
      tok = jnp.where(active, choose(out.logits, jax.random.fold_in(k_sample, st.index), st.seen), pad)
      if emit is not None:
        emit(tok[:, None], active.astype(jnp.int32))
      seen = st.seen
      if seen is not None:
        seen = sampling.mark_seen(seen, tok[:, None], active[:, None])
      return DecodeState(
          index=st.index + 1,
          tokens=jax.lax.dynamic_update_slice(st.tokens, tok[:, None], (0, st.index)),
          steps=jax.lax.dynamic_update_slice(st.steps, jnp.where(active, out.steps, 0)[:, None], (0, st.index)),
          count=st.count + active, last=jnp.where(active, tok, st.last), pos=st.pos + active,
          done=st.done | is_stop(tok, args.stop_ids), cache=out.cache,
          warm=jnp.where(active[:, None, None], warm_start(out, jnp.zeros_like(st.pos)), st.warm), seen=seen)

    final = jax.lax.while_loop(cond, body, state)
    tokens, steps, count = final.tokens, final.steps, final.count

  base = jnp.where(valid, prompt, pad)
  sequences = jnp.concatenate([base, jnp.full((batch, n_new), pad, jnp.int32)], axis=1)
  sequences = jax.vmap(lambda row, new, at: jax.lax.dynamic_update_slice(row, new, (at,)))(sequences, tokens, lengths)
  return GenerationOutput(sequences=sequences, tokens=tokens, steps=steps, num_generated=count)


_generate_jit = jax.jit(_generate_impl, static_argnames=("config", "spec"))


def generate(params: dict, prompt_ids: Array | Sequence[Sequence[int]], *, config: ml_collections.ConfigDict,
             max_new_tokens: int, num_steps: int | None = None,
             key: Array | None = None, init_scale: float = 1.0, cache: str = "full",
             exit_criterion: str | None = None, exit_threshold: float | None = None, continuous: bool = False,
             draft_steps: int | None = None, lookahead: int | None = None, verification_threshold: float = 1.0,
             temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             repetition_penalty: float | None = None, dry_multiplier: float | None = None, dry_base: float = 1.75,
             dry_allowed_length: int = 2, dry_lookback: int = 128, dry_max_match: int = 32,
             stop_ids: Sequence[int] = STOP_IDS, pad_id: int = PAD_ID,
             prompt_lengths: Any = None, stream: Callable | None = None, cache_dtype: Any = None,
             _run: Callable | None = None) -> GenerationOutput:
  """Decodes ``max_new_tokens`` tokens after each prompt with Huginn, in one jitted program.

  ``num_steps`` (default ``config.mean_recurrence``): core iterations per token, the most with an exit criterion.
  ``init_scale``/``key``: the initial core state of each token is random with this scale (0 = zeros, the
  deterministic choice). ``cache``: "full", "latest-m4", "compress-s{m}" or "compress-r{m}".
  ``exit_criterion``: None, "kl", "minp-kl", "entropy-diff", "latent-diff", "cosine" or "argmax-stability", tested
  after every iteration for each row (``exit_threshold`` default: the original's). ``continuous``: each token's
  state starts from the previous token's final latent. ``draft_steps``/``lookahead``: self-speculative decoding
  (defaults 32 and 8 as in the original when only one is given); a draft token is accepted when it is the
  verifier's argmax, or with ``verification_threshold`` < 1 when its probability is at least that fraction of the
  top one (``steps`` then reports ``draft_steps`` for a draft accepted only that way). ``temperature`` 0 is greedy;
  otherwise the repetition penalty (or DRY: ``dry_multiplier`` > 0 with ``dry_base``, ``dry_allowed_length``,
  ``dry_lookback``, ``dry_max_match``; see ``decoding.sampling``), temperature, top-k, top-p and min-p filters apply
  in that order. A row ends
  after a token in ``stop_ids``; the rest of it is ``pad_id``. Prompts: [B, S] right-padded with ``pad_id`` (or
  with ``prompt_lengths``), or a list of token lists. ``stream(new_tokens [B, K], num_new [B])`` is called on the
  host as tokens are produced.
  """
  config_f = config_lib.frozen(config)
  num_steps = config.mean_recurrence if num_steps is None else num_steps
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive int (generation runs at least one core iteration per token; "
                     f"it sizes the cache), got {num_steps!r}.")
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}.")
  prompt, lengths = prepare_prompt(prompt_ids, prompt_lengths, pad_id, config.vocab_size)
  speculative = draft_steps is not None or lookahead is not None
  if speculative:
    draft_steps = 32 if draft_steps is None else draft_steps
    lookahead = 8 if lookahead is None else lookahead
    if lookahead < 1 or draft_steps < 0:
      raise ValueError(f"speculative decoding needs lookahead >= 1 and draft_steps >= 0, got {lookahead}, "
                       f"{draft_steps}.")
    if exit_criterion is not None or continuous:
      raise ValueError("speculative decoding (draft_steps/lookahead) cannot be combined with exit_criterion or "
                       "continuous=True (the original does not support it either); drop one of them.")
  max_len = prompt.shape[1] + max_new_tokens + (lookahead if speculative else 0)
  if max_len > config.max_seq_len:
    raise ValueError(f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) needs {max_len} positions, "
                     f"more than config.max_seq_len={config.max_seq_len}; shorten one of them.")
  criterion = get_criterion(exit_criterion) if exit_criterion is not None else None
  threshold = criterion.default_threshold if criterion is not None and exit_threshold is None else exit_threshold
  if init_scale != 0 and key is None:
    raise ValueError("init_scale != 0 draws a random initial state per token: pass key=jax.random.key(...), or "
                     "init_scale=0.0 for zeros.")
  if temperature and key is None:
    raise ValueError("sampling (temperature > 0) needs key=jax.random.key(...).")
  samp_spec, samp_params = sampling.make_sampling(config.vocab_size, temperature, top_k, top_p, min_p,
                                                  repetition_penalty, dry_multiplier, dry_base, dry_allowed_length,
                                                  dry_lookback, dry_max_match)
  max_depth = max(num_steps, draft_steps or 0)  # the most core iterations a cached token can have
  spec = DecodeSpec(
      layout=cache_lib.cache_layout(cache, config, max_depth), num_steps=int(num_steps),
      max_new_tokens=int(max_new_tokens), max_len=max_len, criterion=exit_criterion, continuous=bool(continuous),
      init_scale=float(init_scale), sampling=samp_spec, pad_id=int(pad_id),
      draft_steps=None if not speculative else int(draft_steps), lookahead=None if not speculative else int(lookahead),
      relaxed_verification=speculative and verification_threshold < 1,
      cache_dtype=jnp.dtype(config.compute_dtype if cache_dtype is None else cache_dtype).name,
      stream=stream is not None)
  args = DecodeArgs(exit_threshold=np.float32(0.0 if threshold is None else threshold), sampling=samp_params,
                    stop_ids=np.asarray(list(stop_ids), np.int32).reshape(-1), sink=np.int32(0),
                    verification_threshold=np.float32(verification_threshold))
  if stream is None or _run is not None:
    return (_run or _generate_jit)(params, prompt, lengths, key, args, config=config_f, spec=spec)
  sink = next(_NEXT_SINK) % (2**31)
  _SINKS[sink] = stream
  try:
    out = _generate_jit(params, prompt, lengths, key, args._replace(sink=np.int32(sink)), config=config_f, spec=spec)
    jax.block_until_ready(out)
    jax.effects_barrier()  # every streamed piece has reached the callback
  finally:
    del _SINKS[sink]
  return out


def lower_generate(params, prompt_ids, **kwargs) -> jax.stages.Lowered:
  """The program ``generate(params, prompt_ids, **kwargs)`` would run, lowered and not run: its HLO, compiled
  memory and cost analysis (``.compile().memory_analysis()``) without decoding anything."""
  return generate(params, prompt_ids, _run=_generate_jit.lower, **kwargs)


def compiled_count() -> int:
  """How many programs the generation function has compiled so far (for tests and diagnostics)."""
  return _generate_jit._cache_size()
