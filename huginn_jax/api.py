"""The functional API (DESIGN.md section 2): pure functions of (params, inputs) with the config as static data.

``params`` is a nested dict of arrays (the pure-dict form of the NNX module state). Inside each call the NNX
module is rebuilt from a cached graph definition, so everything here works under ``jax.jit``, ``jax.grad`` and
``jax.vmap`` and on sharded arrays.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from huginn_jax import config as config_lib
from huginn_jax.attention import SelfAttentionMask
from huginn_jax.model import Huginn, iterate

Array = jax.Array
Params = dict[str, Any]
IGNORE_INDEX = -100


class ForwardOutput(NamedTuple):
  logits: Array  # [B, S, V] float32
  latents: Array  # [B, S, d]: the final recurrent state after ln_f


@functools.lru_cache(maxsize=32)
def _graph(config: ml_collections.FrozenConfigDict):
  """Graph definition and abstract state of the model for a config (no arrays allocated)."""
  abstract = nnx.eval_shape(lambda: Huginn(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  return graphdef, state


def abstract_params(config: ml_collections.ConfigDict) -> Params:
  """Shapes and dtypes of the params (``jax.ShapeDtypeStruct`` leaves), without allocating them."""
  _, state = _graph(config_lib.frozen(config))
  return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), nnx.to_pure_dict(state))


def logical_axes(config: ml_collections.ConfigDict) -> Params:
  """The logical axis names of every parameter, as a pytree of tuples shaped like the params."""
  _, state = _graph(config_lib.frozen(config))
  axes = nnx.to_pure_dict(nnx.get_partition_spec(state))
  return jax.tree.map(tuple, axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def model_from_params(params: Params, config) -> Huginn:
  """The NNX module holding ``params`` (no copy); used inside traced functions."""
  graphdef, abstract = _graph(config_lib.frozen(config))
  check_params(params, config)
  state = jax.tree.map(lambda x: x, abstract)  # a fresh State container to fill
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def check_params(params: Params, config) -> None:
  """Raises a ValueError naming the first parameter whose presence or shape does not fit ``config``."""
  expected = dict(jax.tree_util.tree_flatten_with_path(abstract_params(config))[0])
  given = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  name = lambda path: "/".join(str(getattr(k, "key", k)) for k in path)  # noqa: E731
  for path in expected.keys() - given.keys():
    raise ValueError(f"params do not match the config {config.name!r}: missing parameter {name(path)}.")
  for path in given.keys() - expected.keys():
    raise ValueError(f"params do not match the config {config.name!r}: unexpected parameter {name(path)}.")
  for path, want in expected.items():
    if tuple(given[path].shape) != tuple(want.shape):
      raise ValueError(f"params do not match the config {config.name!r}: {name(path)} has shape "
                       f"{tuple(given[path].shape)}, the config implies {tuple(want.shape)}.")


@functools.lru_cache(maxsize=8)
def _jitted_init(config: ml_collections.FrozenConfigDict):
  """One compiled initializer per config, so repeated ``init`` calls do not recompile."""
  return jax.jit(lambda key: nnx.to_pure_dict(nnx.state(Huginn(config, rngs=nnx.Rngs(params=key)), nnx.Param)))


def init(config: ml_collections.ConfigDict, key: Array) -> Params:
  """Random params for ``config``, with the original's init scheme (std sqrt(2/5d), scaled output layers)."""
  frozen = config_lib.frozen(config_lib.validate(config) if isinstance(config, ml_collections.ConfigDict) else config)
  return _jitted_init(frozen)(key)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_tokens(tokens, config) -> Array:
  tokens = jnp.asarray(tokens) if _is_concrete(tokens) else tokens
  if tokens.ndim != 2:
    raise ValueError(f"token_ids must be [batch, seq] integers, got shape {tokens.shape}; add a batch axis.")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"token_ids must be integers, got dtype {tokens.dtype}.")
  if tokens.shape[1] > config.max_seq_len:
    raise ValueError(f"sequence length {tokens.shape[1]} exceeds config.max_seq_len={config.max_seq_len} (the RoPE "
                     "table of the original); truncate the input or raise max_seq_len.")
  if _is_concrete(tokens) and tokens.size:
    lo, hi = int(np.min(np.asarray(tokens))), int(np.max(np.asarray(tokens)))
    if lo < 0 or hi >= config.vocab_size:
      bad = lo if lo < 0 else hi
      raise ValueError(f"token id {bad} is out of the vocabulary [0, {config.vocab_size}); check the tokenizer "
                       "matches the model.")
  if not _is_concrete(tokens):  # under jit: every out-of-range id (negative ones too) reads a NaN embedding row
    tokens = jnp.where(tokens < 0, config.vocab_size, tokens)
  return tokens.astype(jnp.int32)


def _check_labels(labels, tokens, config) -> Array:
  """Labels like the tokens, each in [0, vocab) or -100 (ignored); checked eagerly, NaN loss under jit."""
  labels = jnp.asarray(labels) if _is_concrete(labels) else labels
  if labels.shape != tokens.shape:
    raise ValueError(f"labels must have the shape of token_ids {tokens.shape}, got {labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
  if _is_concrete(labels) and labels.size:
    host = np.asarray(labels)
    bad = host[(host != IGNORE_INDEX) & ((host < 0) | (host >= config.vocab_size))]
    if bad.size:
      raise ValueError(f"label {int(bad[0])} is out of the vocabulary [0, {config.vocab_size}) and is not "
                       f"{IGNORE_INDEX} (ignored); check the labels match the model's vocabulary.")
  return labels


def _attention_mask(batch: int, seq: int, attention_mask: Array | None) -> SelfAttentionMask:
  """Causal self-attention, excluding padding keys when ``attention_mask`` is given; kept structured so flash
  kernels can use it (``huginn_jax.attention``)."""
  if attention_mask is not None and attention_mask.shape != (batch, seq):
    raise ValueError(f"attention_mask must be [batch, seq] = {(batch, seq)}, got {attention_mask.shape}.")
  return SelfAttentionMask(kv_valid=None if attention_mask is None else attention_mask.astype(bool))


class Prepared(NamedTuple):
  e: Array  # [B, S, d] the prelude's output, injected at every iteration
  state: Array  # [B, S, d] the initial core state
  positions: Array  # [B|1, S] int32
  mask: SelfAttentionMask


def prepare(model: Huginn, tokens: Array, *, positions: Array | None = None, attention_mask: Array | None = None,
            initial_state: Array | None = None, key: Array | None = None, init_scale: float = 1.0) -> Prepared:
  """Runs the prelude and builds the initial state, for ``iterate`` and ``Huginn.head``.

  Shared by ``forward``, ``loss`` and code that inspects the recurrence step by step."""
  batch, seq = tokens.shape
  if positions is None:
    positions = jnp.arange(seq, dtype=jnp.int32)[None]
  mask = _attention_mask(batch, seq, attention_mask)
  e, _ = model.run_prelude(tokens, positions, mask)
  if initial_state is None:
    s = model.initial_state(e, key, init_scale)
  else:
    if initial_state.shape != e.shape:
      raise ValueError(f"initial_state must be [batch, seq, d_model] = {e.shape}, got {initial_state.shape}.")
    s = initial_state.astype(e.dtype)
  return Prepared(e, s, positions, mask)


def _check_steps(num_steps):
  """A negative count is an error when it is known (an int or a concrete array); a traced one is clamped to 0."""
  if _is_concrete(num_steps) and np.ndim(num_steps) == 0 and int(num_steps) < 0:
    raise ValueError(f"num_steps must be >= 0, got {int(num_steps)}.")
  return num_steps


def forward(params: Params, token_ids: Array, *, config: ml_collections.ConfigDict,
            num_steps: int | Array | None = None, initial_state: Array | None = None,
            key: Array | None = None, init_scale: float = 1.0, attention_mask: Array | None = None,
            positions: Array | None = None) -> ForwardOutput:
  """Logits and final latents of Huginn after ``num_steps`` recurrences of the core.

  ``num_steps`` defaults to ``config.mean_recurrence``; it may be a traced int32 scalar (one compilation serves all
  values). The initial state is ``initial_state`` if given, else random from ``key`` (zeros when init_scale=0).
  ``attention_mask`` [B, S] (True = real token) additionally masks padding, which the original does not do.
  Bad input is an error when it is known at call time; under ``jax.jit`` (traced input) a token id outside the
  vocabulary gives NaN logits for its whole sequence, and a negative traced ``num_steps`` runs 0 iterations.
  """
  tokens = _check_tokens(token_ids, config)
  num_steps = _check_steps(config.mean_recurrence if num_steps is None else num_steps)
  model = model_from_params(params, config)
  e, s, positions, mask = prepare(model, tokens, positions=positions, attention_mask=attention_mask,
                                  initial_state=initial_state, key=key, init_scale=init_scale)
  s = iterate(model.core, s, e, positions, mask, num_steps).state
  latents, logits, _ = model.head(s, positions, mask)
  return ForwardOutput(logits=logits, latents=latents)


def _nll_sum(logits: Array, labels: Array) -> tuple[Array, Array]:
  """(summed negative log-likelihood, count) over labels != -100, in float32."""
  valid = labels != IGNORE_INDEX
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  # The label's log-probability as a masked sum, not a gather: the same per-token value and gradient to the bit,
  # but the gradient is a select instead of a scatter into a zero [.., vocab] array (benchmarks/loss_head.py).
  nll = -jnp.sum(jnp.where(jnp.arange(logp.shape[-1]) == labels[..., None], logp, 0.0), axis=-1)
  out_of_range = valid & ((labels < 0) | (labels >= logits.shape[-1]))
  nll = jnp.where(out_of_range, jnp.nan, nll)  # a label no logit stands for poisons the loss instead of hiding
  return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid)


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Mean cross-entropy over labels != -100 (float32)."""
  nll, count = _nll_sum(logits, labels)
  return nll / jnp.maximum(count, 1)


def chunked_cross_entropy(model: Huginn, x: Array, labels: Array, chunk: int) -> Array:
  """``cross_entropy(model.logits(x), labels)`` without ever holding all the logits: ``chunk`` positions at a time,
  each chunk's logits recomputed in the backward pass. At a 65,536-word vocabulary the float32 logits of one
  4,096-token sequence are 1 GiB, and their gradient another."""
  batch, seq = labels.shape
  chunk = min(chunk, seq)
  n_chunks = -(-seq // chunk)
  pad = n_chunks * chunk - seq
  x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
  labels = jnp.pad(labels, ((0, 0), (0, pad)), constant_values=IGNORE_INDEX)
  xs = jnp.moveaxis(x.reshape(batch, n_chunks, chunk, -1), 1, 0)
  ys = jnp.moveaxis(labels.reshape(batch, n_chunks, chunk), 1, 0)

  one = jax.checkpoint(lambda x_chunk, y_chunk: _nll_sum(model.logits(x_chunk), y_chunk))

  def body(total, xy):
    nll, count = one(*xy)
    return (total[0] + nll, total[1] + count), None

  (nll, count), _ = jax.lax.scan(body, (jnp.zeros([], jnp.float32), jnp.zeros([], jnp.int32)), (xs, ys))
  return nll / jnp.maximum(count, 1)


def _depth(config, num_steps, depth) -> tuple[Any, Any]:
  """The (n, k) of ``loss``: ``depth``, or (0, num_steps), or the config's (r - k0, k0)."""
  if isinstance(num_steps, (tuple, list)):  # the old spelling of depth
    warnings.warn("hj.loss(num_steps=(n, k)) is deprecated: pass depth=(n, k); num_steps is an iteration count.",
                  DeprecationWarning, stacklevel=3)
    num_steps, depth = None, (depth if depth is not None else tuple(num_steps))
  if depth is not None and num_steps is not None:
    raise ValueError("hj.loss takes num_steps (all iterations with gradient) or depth=(n, k), not both.")
  if depth is None:
    if num_steps is not None:
      return 0, num_steps
    return max(config.mean_recurrence - config.mean_backprop_depth, 0), config.mean_backprop_depth
  if not isinstance(depth, (tuple, list)) or len(depth) != 2:
    raise ValueError(f"depth must be a pair (n iterations without gradient, k with gradient), got {depth!r}.")
  return tuple(depth)


def loss(params: Params, token_ids: Array, labels: Array, *, config: ml_collections.ConfigDict,
         num_steps: int | Array | None = None, depth: tuple[int | Array, int | Array] | None = None,
         initial_state: Array | None = None, key: Array | None = None, init_scale: float = 1.0,
         max_grad_steps: int | None = None, attention_mask: Array | None = None,
         remat_policy: str = "nothing_saveable", loss_chunk: int | None = None) -> Array:
  """Cross-entropy with truncated backprop through the recurrence, as the original trains.

  ``depth=(n, k)``: n iterations under ``stop_gradient`` (neither the state nor the injected prelude output
  carries gradient there), then k with gradient; default the config's (mean_recurrence - mean_backprop_depth,
  mean_backprop_depth). ``num_steps`` instead: that many iterations, all with gradient (depth (0, num_steps)).
  n may be traced; a traced k needs ``max_grad_steps`` (the static length of the masked gradient scan, default
  ``config.mean_backprop_depth``). ``remat_policy``: ``jax.checkpoint`` policy of each gradient iteration.
  ``loss_chunk``: compute the vocabulary projection and cross-entropy that many positions at a time (the same
  loss; saves the [B, S, vocab] float32 logits and their gradient). A label outside [0, vocab) other than -100 is
  an error when known at call time, and makes the loss NaN under ``jax.jit``.
  """
  tokens = _check_tokens(token_ids, config)
  labels = _check_labels(labels, tokens, config)
  n, k = _depth(config, num_steps, depth)
  _check_steps(n), _check_steps(k)
  if not isinstance(k, (int, np.integer)) and max_grad_steps is None:
    max_grad_steps = config.mean_backprop_depth
  model = model_from_params(params, config)
  e, s, positions, mask = prepare(model, tokens, attention_mask=attention_mask, initial_state=initial_state, key=key,
                                  init_scale=init_scale)
  sg = jax.lax.stop_gradient
  s = sg(iterate(sg(model.core), sg(s), sg(e), positions, mask, n).state)
  s = iterate(model.core, s, e, positions, mask, k, max_steps=max_grad_steps,
                remat_policy=remat_policy).state
  labels = jnp.asarray(labels)
  if loss_chunk:
    if loss_chunk < 1:
      raise ValueError(f"loss_chunk must be a positive number of positions (or None), got {loss_chunk}.")
    _, x, _ = model.run_coda(s, positions, mask)
    return chunked_cross_entropy(model, x, labels, int(loss_chunk))
  _, logits, _ = model.head(s, positions, mask)
  return cross_entropy(logits, labels)
