"""``hj.generate_diffusion``: the original's diffusion-style sampler, batched, as one jitted program.

Instead of one token per forward pass, a *wavefront* of not-yet-frozen positions is refined together: each round
runs ``inner_recurrence`` core iterations over the whole wavefront (against the KV cache of the frozen prefix),
decodes a token at every wavefront position, appends ``headway`` new positions, and freezes the prefix whose
latents have settled. The rules are those of the original's ``generate_diffusion_style`` (including the way it
aligns the previous round's states, the moving average of embeddings and the noise mixed into the states), so that
with the same settings it returns the same tokens; the differences are that rows of a batch run side by side, each
freezing on its own, and that shapes are static: every round processes ``max_wavefront`` lanes (the rows' real
wavefronts are masked inside them), so a smaller ``max_wavefront`` is cheaper per round.

Per row the state is the original's: the current sequence ``seq[:lc]`` whose prefix ``seq[:f]`` is frozen, the
cache length ``ci`` (positions below it are cached and not recomputed), the wavefront ``states`` of ``w`` positions
starting at ``ci``, per-position recurrence and token-stability counters, and the previous rounds' states for the
freeze test. The counters the original reports come back with the tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from huginn_jax import config as config_lib
from huginn_jax.api import model_from_params
from huginn_jax.decoding import cache as cache_lib
from huginn_jax.decoding import sampling
from huginn_jax.decoding.chunk import run_chunk
from huginn_jax.decoding.generate import PAD_ID, STOP_IDS, is_stop, prepare_prompt
from huginn_jax.model import cast_weights

Array = jax.Array

FREEZE_STRATEGIES = ("latent-diff", "latent-acceleration-1", "latent-acceleration-2", "token-stability", "fixed")


class DiffusionOutput(NamedTuple):
  sequences: Array  # [B, T] each row's frozen tokens (its prompt first), then pad_id
  lengths: Array  # [B] frozen tokens per row, the prompt included (the original's returned length)
  core_forward_passes: Array  # [B] the original's count: 1 for the prefill, then one per inner core iteration
  tokens_forwarded: Array  # [B] positions pushed through those passes (prompt length for the prefill)
  cache_clears: Array  # [B] cache entries discarded after rounds (positions recomputed in the next one)
  standing_waves: Array  # [B] rounds in which the wavefront hit max_wavefront
  rounds: Array  # [B] wavefront rounds run
  recurrences: Array  # [B, T] core iterations each position has seen


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
  """Everything static about a diffusion-style generation; one compilation per distinct spec and shapes."""

  layout: cache_lib.CacheLayout
  num_steps: int
  inner: int
  max_new_tokens: int
  lanes: int  # wavefront lanes processed per round (max_wavefront, or the cache length when unlimited)
  max_wavefront: int  # <= 0: unlimited
  cache_len: int
  seq_len: int
  headway: int
  full_prefill: bool
  ema: bool
  noise: bool
  dampened: bool
  sqrt_mixer: bool
  continuous: bool
  freeze: str
  init_scale: float
  sampling: sampling.SamplingSpec
  pad_id: int
  block_size: int
  cache_dtype: str


class DiffusionArgs(NamedTuple):
  ema: Array  # ema_embeds
  ema_rest: Array  # 1 - ema_embeds, computed on the host in double precision as the original does
  noise: Array  # state_noise_mixing
  exit_t: Array
  max_rounds: Array  # max_diffusion_steps
  sampling: sampling.SamplingParams
  stop_ids: Array


class _Row(NamedTuple):
  """The per-row loop state (every field has the batch first)."""

  done: Array
  step: Array  # rounds run
  seq: Array  # [B, Ts] the current sequence (frozen prefix, then the wavefront's guesses)
  lc: Array  # its length
  f: Array  # frozen length
  ci: Array  # cache length = first wavefront position
  w: Array  # wavefront size
  states: Array  # [B, S, d] wavefront states, lane i at position ci + i
  counter: Array  # [B, Ts] core iterations per position
  stable: Array  # [B, Ts] rounds in which each position's token did not change
  old_embeds: Array  # [B, L, d] last round's (mixed) embeddings, lane i at position old_ci + i
  old_len: Array
  old_ci: Array  # last round's ci (the original aligns both old embeddings and previous states with it)
  prev: Array  # [B, S, d] last round's final states
  prev_len: Array
  prev_delta: Array  # [B, S, d] latent-acceleration-1
  prev_delta_len: Array
  prev2: Array  # [B, S, d] the round before's final states (latent-acceleration-2)
  prev2_len: Array
  old_old_ci: Array
  k: Array  # frozen length set by the last freeze (latent strategies); the stop test looks at [last round's k, k)
  passes: Array
  forwarded: Array
  clears: Array
  waves: Array


def _take(x: Array, idx: Array) -> Array:
  """x [B, N, ...] at idx [B, M] (clipped into range) -> [B, M, ...]."""
  idx = jnp.clip(idx, 0, x.shape[1] - 1)
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _norm(x: Array) -> Array:
  return jnp.linalg.norm(x.astype(jnp.float32), axis=-1)


def _last_true(mask: Array) -> tuple[Array, Array]:
  """(any [B], index of the last True [B]) of a [B, N] mask."""
  n = mask.shape[1]
  return jnp.any(mask, axis=1), n - 1 - jnp.argmax(mask[:, ::-1], axis=1).astype(jnp.int32)


def _diffusion_impl(params, prompt: Array, lengths: Array, key: Array | None, args: DiffusionArgs, *,
                    config: ml_collections.FrozenConfigDict, spec: DiffusionSpec) -> DiffusionOutput:
  model = model_from_params(cast_weights(params, config.compute_dtype), config)
  batch, width = prompt.shape
  d, dtype = config.d_model, jnp.dtype(config.compute_dtype)
  lanes, headway = spec.lanes, spec.headway
  slots = lanes + headway  # states after the new positions are appended
  seq_len = spec.seq_len
  key = jax.random.key(0) if key is None else key
  k_prefill, k_init, k_round = jax.random.split(key, 3)
  everyone = jnp.ones((batch,), bool)
  valid = jnp.arange(width)[None] < lengths[:, None]
  positions = jnp.arange(seq_len, dtype=jnp.int32)[None]

  def fresh_states(k, n):  # the original's initialize_state: zeros at init_scale 0
    return model.initial_state(jnp.zeros((batch, n, d), dtype), k, spec.init_scale)

  def history(seq, f):
    if not spec.sampling.needs_history:
      return None
    frozen = positions < f[:, None]
    seen = None
    if spec.sampling.repetition_penalty:
      seen = sampling.mark_seen(jnp.zeros((batch, config.vocab_size), bool), seq, frozen)
    return sampling.History(seen, seq, f)

  def choose(logits, k, hist):  # logits [B, N, V] -> [B, N]
    logits = sampling.penalise(logits, spec.sampling, args.sampling, hist)
    flat = logits.reshape(-1, logits.shape[-1])
    return sampling.select(flat, k, spec.sampling, args.sampling).reshape(logits.shape[:-1])

  seq = jnp.full((batch, seq_len), 0, jnp.int32).at[:, :width].set(prompt)
  cache = cache_lib.init_cache(spec.layout, config, batch, spec.cache_len, spec.cache_dtype)
  zeros_i = jnp.zeros((batch,), jnp.int32)
  if spec.full_prefill:
    out = run_chunk(model, spec.layout, cache, prompt, zeros_i, num_steps=spec.num_steps, active=everyone,
                    valid=valid, last=lengths - 1, key=k_prefill, init_scale=spec.init_scale)
    cache = out.cache
    first = choose(out.logits[:, None], jax.random.fold_in(k_prefill, 1), history(seq, lengths))[:, 0]
    seq = jax.vmap(lambda row, tok, at: row.at[at].set(tok))(seq, first, lengths)
    f = lc = lengths + 1
    counter = jnp.where(positions < f[:, None], spec.num_steps, 0).astype(jnp.int32)
    ci, w = lengths, jnp.ones((batch,), jnp.int32)
    passes, forwarded = jnp.ones((batch,), jnp.int32), lengths
  else:
    f = lc = w = lengths
    counter = jnp.zeros((batch, seq_len), jnp.int32)
    ci = passes = forwarded = zeros_i
  states = jnp.zeros((batch, slots, d), dtype).at[:, :lanes].set(fresh_states(k_init, lanes))
  state = _Row(
      done=jnp.zeros((batch,), bool), step=zeros_i, seq=seq, lc=lc, f=f, ci=ci, w=w, states=states,
      counter=counter, stable=jnp.zeros((batch, seq_len), jnp.int32),
      old_embeds=jnp.zeros((batch, lanes, d), dtype), old_len=lc, old_ci=zeros_i,
      prev=states, prev_len=w, prev_delta=jnp.zeros_like(states), prev_delta_len=w, prev2=jnp.zeros_like(states),
      prev2_len=w, old_old_ci=zeros_i, k=zeros_i, passes=passes, forwarded=forwarded,
      clears=zeros_i, waves=zeros_i)
  state = state._replace(done=~_keeps_going(state, lengths, spec))

  def cond(carry):
    return ~jnp.all(carry[0].done)

  def body(carry):
    st, cache = carry
    new, cache = _round(model, st, cache, lengths, jax.random.fold_in(k_round, jnp.max(st.step)), args, spec,
                        fresh_states, choose, history)
    active = ~st.done
    gated = jax.tree.map(lambda n, o: jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, st)
    return gated, cache

  st, _ = jax.lax.while_loop(cond, body, (state, cache))
  sequences = jnp.where(positions < st.f[:, None], st.seq, spec.pad_id)
  recurrences = jnp.where(positions < st.f[:, None], st.counter, 0)
  return DiffusionOutput(sequences=sequences, lengths=st.f, core_forward_passes=st.passes,
                         tokens_forwarded=st.forwarded, cache_clears=st.clears, standing_waves=st.waves,
                         rounds=st.step, recurrences=recurrences)


def _keeps_going(st: _Row, prompt_lengths: Array, spec: DiffusionSpec) -> Array:
  """The original's loop condition: fewer than max_new_tokens frozen and the sequence within the block size."""
  return ~st.done & (st.f - prompt_lengths < spec.max_new_tokens) & (st.lc <= spec.block_size)


def _round(model, st: _Row, cache, prompt_lengths, key, args: DiffusionArgs, spec: DiffusionSpec, fresh_states,
           choose, history):
  """One round of the sampler for every row (the caller keeps finished rows unchanged)."""
  batch = st.seq.shape[0]
  lanes, headway, inner = spec.lanes, spec.headway, spec.inner
  slots = lanes + headway
  k_noise, k_sample, k_guess, k_new = jax.random.split(key, 4)
  lane = jnp.arange(lanes, dtype=jnp.int32)[None]
  slot = jnp.arange(slots, dtype=jnp.int32)[None]
  positions = jnp.arange(st.seq.shape[1], dtype=jnp.int32)[None]
  ci, w, f = st.ci, st.w, st.f
  active = ~st.done

  # The wavefront's states, with noise mixed in (less for positions that have seen more iterations).
  states = st.states[:, :lanes]
  if spec.noise:
    noise = args.noise / (1 + _take(st.counter, ci[:, None] + lane)) if spec.dampened else args.noise
    noise = jnp.broadcast_to(jnp.asarray(noise, jnp.float32), (batch, lanes))[..., None].astype(states.dtype)
    rand = fresh_states(k_noise, lanes)
    if spec.sqrt_mixer:
      states = states * jnp.sqrt(jax.nn.relu(1 - noise)) + jnp.sqrt(noise) * rand
    else:
      states = states * (1 - noise) + noise * rand

  # Embeddings: a moving average with last round's, aligned by position; in the first round last round's are the
  # same tokens' (the original recomputes them without the cache).
  mixed = []

  def mix_embeds(e):
    shift = ci - st.old_ci
    old = jnp.where((st.step == 0)[:, None, None], e, _take(st.old_embeds, shift[:, None] + lane))
    matching = (lane < (st.old_len - shift)[:, None])[..., None]
    out = e * args.ema_rest.astype(e.dtype) + jnp.where(matching, old * args.ema.astype(e.dtype), 0)
    mixed.append(out)
    return out

  tokens_in = _take(st.seq, ci[:, None] + lane)
  out = run_chunk(model, spec.layout, cache, tokens_in, ci, num_steps=inner, active=active, init_state=states,
                  all_logits=True, embed_mix=mix_embeds if spec.ema else None)
  s = out.state
  in_wave = (positions >= ci[:, None]) & (positions < (ci + w)[:, None])
  counter = st.counter + inner * in_wave
  passes, forwarded = st.passes + inner, st.forwarded + inner * w

  # A token at every wavefront position from the last frozen one on; position ci + i + 1 gets lane i's token.
  tok = choose(out.logits, k_sample, history(st.seq, f))
  from_tok = _take(tok, positions - 1 - ci[:, None])
  edits = jnp.where(positions < f[:, None], st.seq, from_tok)
  stable = st.stable + ((st.seq == edits) & (positions < st.lc[:, None]))
  seq = jnp.where((positions >= f[:, None]) & (positions <= (ci + w)[:, None]), from_tok, st.seq)
  if headway > 1:  # the original guesses the extra positions' tokens at random
    guess = jax.random.randint(k_guess, seq.shape, 0, model.config.vocab_size, jnp.int32)
    seq = jnp.where((positions > (ci + w)[:, None]) & (positions < (ci + w + headway)[:, None]), guess, seq)
  lc = ci + w + headway

  # Append headway positions: fresh states, or copies of the last ones with continuous compute.
  buf = jnp.zeros((batch, slots, s.shape[-1]), s.dtype).at[:, :lanes].set(s)
  new_states = fresh_states(k_new, headway)
  for j in range(headway):
    start = new_states[:, j:j + 1]
    if spec.continuous:
      start = jnp.where((w >= headway)[:, None, None], _take(s, (w - headway + j)[:, None]), start)
    buf = jnp.where((slot == (w + j)[:, None])[..., None], start, buf)
  length = w + headway
  headway_now = jnp.full((batch,), headway, jnp.int32)
  waves = st.waves
  if spec.max_wavefront > 0:
    over = length > spec.max_wavefront
    headway_now = jnp.where(over, spec.max_wavefront - w, headway_now)
    length = jnp.where(over, spec.max_wavefront, length)
    lc = jnp.where(over, ci + spec.max_wavefront, lc)
    waves = waves + over

  # Freeze the settled prefix; the cache keeps positions below the new ci, the wavefront restarts there.
  prev_delta, prev_delta_len = st.prev_delta, st.prev_delta_len
  k, old_k = st.k, st.k
  if spec.freeze.startswith("latent"):
    offset = ci - st.old_ci  # the original aligns last round's states by this offset
    compared = jnp.maximum(st.prev_len - offset, 0)
    if spec.freeze == "latent-acceleration-2":
      lo = jnp.maximum(jnp.maximum(ci, st.old_ci), st.old_old_ci)
      hi = jnp.minimum(jnp.minimum(ci + length, st.old_ci + st.prev_len), st.old_old_ci + st.prev2_len)
      cur = _take(buf, lo[:, None] - ci[:, None] + slot)
      pr = _take(st.prev, lo[:, None] - st.old_ci[:, None] + slot)
      pp = _take(st.prev2, lo[:, None] - st.old_old_ci[:, None] + slot)
      crit = _norm((cur - pr) - (pr - pp)) / (_norm(cur) + 1e-6)
      counted = slot < (hi - lo)[:, None]
    else:
      delta = buf - _take(st.prev, offset[:, None] + slot)
      if spec.freeze == "latent-diff":
        crit = _norm(delta) / _norm(buf)
        counted = slot < compared[:, None]
      else:  # latent-acceleration-1: change of the change, index-aligned with last round's
        shortest = jnp.minimum(compared, st.prev_delta_len)
        crit = _norm(delta - st.prev_delta) / _norm(buf)
        counted = slot < shortest[:, None]
        prev_delta, prev_delta_len = delta, compared
    exits = (crit < args.exit_t) & counted
    froze, last = _last_true(exits)
    k = jnp.where(froze, ci + last + 1, st.k)
  elif spec.freeze == "token-stability":
    froze, last = _last_true(stable > spec.num_steps // inner)
    k = jnp.where(froze, last + 1, 0)
  if spec.freeze == "fixed":
    froze = st.step > spec.num_steps // inner
    shift = jnp.where(froze, headway_now, 0)
    new_ci = jnp.where(froze, ci + headway, ci)
    clears = jnp.where(froze, length - headway - headway_now, w)
    new_f = jnp.where(froze, f + headway_now, f)
  else:
    shift = jnp.where(froze, jnp.maximum(k - ci - 1, 0), 0)
    new_ci = jnp.where(froze, k - 1, ci)
    clears = jnp.where(froze, ci + w - k + 1, w)
    new_f = jnp.where(froze, k, f)
  states = _take(buf, slot + shift[:, None])
  length = length - shift

  # Stop ids among the newly frozen tokens end a row, once the round count passes num_steps.
  if spec.freeze.startswith("latent"):
    window = (positions >= old_k[:, None]) & (positions < k[:, None])
  else:
    window = (positions >= (new_f - headway)[:, None]) & (positions < new_f[:, None])
  stop = jnp.any(is_stop(seq, args.stop_ids) & window, axis=1) & (st.step > spec.num_steps)
  done = stop | (st.step > args.max_rounds)

  prev2, prev2_len, old_old_ci = st.prev2, st.prev2_len, st.old_old_ci
  if spec.freeze == "latent-acceleration-2":
    prev2, prev2_len, old_old_ci = st.prev, st.prev_len, st.old_ci
  new = _Row(
      done=done, step=st.step + 1, seq=seq, lc=lc, f=new_f, ci=new_ci, w=length, states=states, counter=counter,
      stable=stable, old_embeds=mixed[0] if mixed else st.old_embeds, old_len=w, old_ci=ci, prev=states,
      prev_len=length, prev_delta=prev_delta, prev_delta_len=prev_delta_len, prev2=prev2, prev2_len=prev2_len,
      old_old_ci=old_old_ci, k=k, passes=passes, forwarded=forwarded, clears=st.clears + clears,
      waves=waves)
  new = new._replace(done=~_keeps_going(new, prompt_lengths, spec))
  return new, out.cache


_diffusion_jit = jax.jit(_diffusion_impl, static_argnames=("config", "spec"))


def generate_diffusion(params, prompt_ids, *, config, max_new_tokens: int, num_steps: int | None = None,
                       key: Array | None = None, init_scale: float = 1.0, cache: str = "latest-m4-compress-s4",
                       full_prefill: bool = True, ema_embeds: float = 0.1, state_noise_mixing: float = 0.5,
                       inner_recurrence: int = 4, freeze_strategy: str = "latent-diff", headway: int = 1,
                       dampened_state_mixer: bool = True, sqrt_mixer: bool = False, continuous_compute: bool = False,
                       exit_t: float = 0.03, max_wavefront: int = 128, max_diffusion_steps: int = 4096,
                       temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                       min_p: float | None = None, repetition_penalty: float | None = None,
                       dry_multiplier: float | None = None, dry_base: float = 1.75, dry_allowed_length: int = 2,
                       dry_lookback: int = 128, dry_max_match: int = 32, stop_ids: Sequence[int] = STOP_IDS,
                       pad_id: int = PAD_ID, prompt_lengths: Any = None, cache_dtype: Any = None) -> DiffusionOutput:
  """Decodes after each prompt with the original's diffusion-style sampler, in one jitted program.

  ``num_steps`` (default ``config.mean_recurrence``): core iterations of the prompt's prefill (``full_prefill``;
  without it the prompt is the first wavefront); it also sets when the stop test starts and, for
  ``freeze_strategy`` "token-stability"/"fixed", how many rounds a token must last (``num_steps // inner_recurrence``).
  Each round runs ``inner_recurrence`` core iterations over the wavefront, then appends ``headway`` positions
  (beyond the first, their tokens are random guesses). ``freeze_strategy``: "latent-diff" (freeze up to the last
  position whose state changed by less than ``exit_t`` relative to last round), "latent-acceleration-1"/"-2",
  "token-stability" or "fixed". ``ema_embeds``: weight of last round's embeddings in a moving average;
  ``state_noise_mixing``: weight of a fresh random state mixed into each state every round (divided by one plus the
  iterations the position has seen when ``dampened_state_mixer``; square-root weights with ``sqrt_mixer``).
  ``continuous_compute``: new positions start from the last states instead of fresh ones. ``max_wavefront``: at most
  this many positions in flight (<= 0: no limit; every round costs this many lanes). ``cache``: a strategy of
  ``hj.decoding.STRATEGIES``. Sampling and stop ids as in ``hj.generate``. The result, like the original's, may hold
  more than ``max_new_tokens`` new tokens (a freeze can take several at once) and has the original's counters.
  """
  config_f = config_lib.frozen(config)
  num_steps = config.mean_recurrence if num_steps is None else num_steps
  for name, value, least in (("num_steps", num_steps, 0), ("max_new_tokens", max_new_tokens, 1),
                             ("inner_recurrence", inner_recurrence, 1), ("headway", headway, 1),
                             ("max_diffusion_steps", max_diffusion_steps, 0)):
    if not isinstance(value, (int, np.integer)) or value < least:
      raise ValueError(f"{name} must be an int >= {least}, got {value!r}.")
  if freeze_strategy not in FREEZE_STRATEGIES:
    raise ValueError(f"Unknown freeze_strategy {freeze_strategy!r}; choose one of {', '.join(FREEZE_STRATEGIES)}.")
  if not 0 <= ema_embeds <= 1 or state_noise_mixing < 0:
    raise ValueError(f"ema_embeds must be in [0, 1] and state_noise_mixing >= 0, got {ema_embeds}, "
                     f"{state_noise_mixing}.")
  prompt, lengths = prepare_prompt(prompt_ids, prompt_lengths, pad_id, config.vocab_size)
  width = prompt.shape[1]
  block = config.max_seq_len
  lanes = int(max_wavefront) if max_wavefront > 0 else block
  if not full_prefill and int(lengths.max()) > lanes:
    raise ValueError(f"a prompt of {int(lengths.max())} tokens does not fit the wavefront (max_wavefront="
                     f"{max_wavefront}) without a prefill; use full_prefill=True or max_wavefront >= "
                     f"{int(lengths.max())}.")
  cache_len = min(width + max_new_tokens + lanes, block)
  if width + 1 + headway > cache_len or width >= block:
    raise ValueError(f"prompt ({width}) + max_new_tokens ({max_new_tokens}) leaves no room in "
                     f"config.max_seq_len={block}; shorten one of them.")
  lanes = min(lanes, cache_len)
  if init_scale != 0 and key is None:
    raise ValueError("init_scale != 0 draws random states: pass key=jax.random.key(...), or init_scale=0.0 for "
                     "zeros.")
  if (temperature or headway > 1) and key is None:
    raise ValueError("sampling (temperature > 0) and headway > 1 (random guesses) need key=jax.random.key(...).")
  samp_spec, samp_params = sampling.make_sampling(config.vocab_size, temperature, top_k, top_p, min_p,
                                                  repetition_penalty, dry_multiplier, dry_base, dry_allowed_length,
                                                  dry_lookback, dry_max_match)
  max_depth = max(num_steps if full_prefill else 0, inner_recurrence)  # the most core iterations of a cached token
  spec = DiffusionSpec(
      layout=cache_lib.cache_layout(cache, config, max_depth), num_steps=int(num_steps),
      inner=int(inner_recurrence), max_new_tokens=int(max_new_tokens), lanes=lanes,
      max_wavefront=int(max_wavefront), cache_len=cache_len, seq_len=cache_len + headway, headway=int(headway),
      full_prefill=bool(full_prefill), ema=ema_embeds > 0, noise=state_noise_mixing > 0,
      dampened=bool(dampened_state_mixer), sqrt_mixer=bool(sqrt_mixer), continuous=bool(continuous_compute),
      freeze=freeze_strategy, init_scale=float(init_scale), sampling=samp_spec, pad_id=int(pad_id),
      block_size=block, cache_dtype=jnp.dtype(config.compute_dtype if cache_dtype is None else cache_dtype).name)
  args = DiffusionArgs(ema=np.float32(ema_embeds), ema_rest=np.float32(1.0 - ema_embeds),
                       noise=np.float32(state_noise_mixing), exit_t=np.float32(exit_t),
                       max_rounds=np.int32(max_diffusion_steps), sampling=samp_params,
                       stop_ids=np.asarray(list(stop_ids), np.int32).reshape(-1))
  return _diffusion_jit(params, prompt, lengths, key, args, config=config_f, spec=spec)
