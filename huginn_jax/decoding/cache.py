"""The KV cache of Huginn decoding: a preallocated pytree with static shapes and one slot per cached layer.

The original keeps a dict of KV entries per (layer, recurrence step) and per token. Here every entry lives in
``k_store``/``v_store`` arrays shaped [slots, B, H, T, D] (heads-major: the attention reads a slot as it lies; with
[B, T, H, D], XLA CPU transposed both for every layer of every iteration, a third of batch-8 decoding's time in
issue 15's profile); ``depth`` [B, T] records how many core iterations were
computed for the token at each position, which is all that is needed to know which core slots hold an entry for it.
The cache is sized for tokens of at most ``max_depth`` core iterations (r below); a chunk runs ``num_steps`` <=
``max_depth`` of them (generation sizes the cache for the larger of its verifier's and its drafts' counts).

Slots, with p prelude, c core and q coda layers and r recurrence steps (core layer j of step s has the flat index
f = c*s + j): prelude i -> i, core f -> p + slot(f), coda i -> p + (core slots) + i, where slot(f) is

- ``f`` without compression (c*r core slots, 132 in all at r=32);
- ``f mod m`` for ``compress-s{m}`` (m slots shared cyclically; m = c keeps one slot per core layer, so later
  tokens read the final-step KV of earlier tokens);
- ``f // m`` for ``compress-r{m}`` (runs of m consecutive core layers share a slot);
- ``f`` for the first 8 recurrences and ``8c + j`` after them for ``compress-anchor`` (later steps share the
  slots of the ninth recurrence).

The lookup rule says what a query reads for a cached token that did not write the slot (it exited early):

- ``full`` and ``skip``: nothing, the token is masked out (the original's ``full`` stacks only the entries that
  exist, and ``skip`` drops the missing ones).
- ``latest-m4`` (and ``available-m4``, which picks the same entries): the token's latest written slot of the same
  core layer at or before the query's slot (the original hard-codes the 4-layer core in the name: "same layer"
  is a slot index congruent mod c).
- ``always-last-m4``: if any cached token misses the slot, every token is read at its last written slot of the same
  layer, even one later than the query's; otherwise each is read at the query's slot.

A lookup rule and a compression combine as ``<rule>-compress-...`` (e.g. ``latest-m4-compress-s4``, the diffusion
sampler's default). A query attends to a cached position if it is causally visible and the rule gives it an entry.
Where the original raises (no entry of the same layer exists, or a compressed cache misses an entry without a lookup
rule), here the token is masked out.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_RULES = {"full": "full", "skip": "full", "latest-m4": "latest", "available-m4": "latest",
          "always-last-m4": "always-last"}
_STRATEGY = re.compile(r"^(?:(latest-m4|available-m4|always-last-m4|skip)-)?(compress-s(\d+)|compress-r(\d+)|"
                       r"compress-anchor)$|^(full|latest-m4|available-m4|always-last-m4|skip)$")
STRATEGIES = ("full", "skip", "latest-m4", "available-m4", "always-last-m4", "compress-s{m}", "compress-r{m}",
              "compress-anchor", "{latest-m4|available-m4|always-last-m4|skip}-compress-{s{m}|r{m}|anchor}")
ANCHORED_STEPS = 8  # compress-anchor keeps the first 8 recurrences' slots, as the original does


@dataclasses.dataclass(frozen=True)
class CacheLayout:
  """Static description of the slot mapping for a strategy, a model shape and ``max_depth``, the most core iterations
  a cached token can have (it sizes the core slots)."""

  strategy: str
  lookup: str  # "full" (missing entries masked) | "latest" | "always-last"
  compress: str  # "" | "s" | "r" | "anchor"
  m: int  # the compression stage (0 unless compress-s/-r)
  n_prelude: int
  n_core: int
  n_coda: int
  max_depth: int

  @property
  def core_slots(self) -> int:
    flat = self.n_core * self.max_depth
    if self.compress == "s":
      return min(self.m, flat)
    if self.compress == "r":
      return -(-flat // self.m)
    if self.compress == "anchor":
      return min(flat, (ANCHORED_STEPS + 1) * self.n_core)
    return flat

  @property
  def n_slots(self) -> int:
    return self.n_prelude + self.core_slots + self.n_coda

  def prelude_slot(self, i: int) -> int:
    return i

  def coda_slot(self, i: int) -> int:
    return self.n_prelude + self.core_slots + i

  def core_slot(self, step, j: int):
    """Slot of core layer j at recurrence ``step`` (a Python int or a traced int32)."""
    flat = step * self.n_core + j
    if self.compress == "s":
      flat = flat % self.m
    elif self.compress == "r":
      flat = flat // self.m
    elif self.compress == "anchor":
      anchor = ANCHORED_STEPS * self.n_core
      shared = anchor + (flat - anchor) % self.n_core
      flat = jnp.where(flat < anchor, flat, shared) if isinstance(flat, jax.Array) else (
          flat if flat < anchor else shared)
    return self.n_prelude + flat

  def first_writer(self) -> np.ndarray:
    """For each core slot, the smallest flat core index that writes it: a token of depth n wrote it iff < c*n."""
    rel = np.arange(self.core_slots)
    return rel * self.m if self.compress == "r" else rel

  def slots_written(self) -> np.ndarray:
    """For depth n = 0..max_depth, how many core slots a token of that depth wrote (always the first ones)."""
    return np.searchsorted(self.first_writer(), self.n_core * np.arange(self.max_depth + 1), side="left")

  @property
  def num_steps(self) -> int:
    """Deprecated name of ``max_depth``."""
    warnings.warn("CacheLayout.num_steps is deprecated: read max_depth (the most core iterations a cached token can "
                  "have; num_steps is an iteration count).", DeprecationWarning, stacklevel=2)
    return self.max_depth


def _renamed_max_depth(fn):
  """Lets ``fn`` take its cache-sizing bound ``max_depth`` under the old keyword ``num_steps``, with a
  ``DeprecationWarning`` (``num_steps`` names an iteration count everywhere else)."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if "num_steps" in kwargs:
      if "max_depth" in kwargs:
        raise TypeError(f"{fn.__name__}() takes max_depth or its deprecated name num_steps, not both.")
      warnings.warn(f"{fn.__name__}(num_steps=...) is deprecated: pass max_depth=... (the most core iterations a "
                    "cached token can have, which sizes the cache; num_steps is an iteration count).",
                    DeprecationWarning, stacklevel=2)
      kwargs["max_depth"] = kwargs.pop("num_steps")
    return fn(*args, **kwargs)

  return wrapper


@_renamed_max_depth
def cache_layout(strategy: str, config, max_depth: int) -> CacheLayout:
  """The layout of ``strategy`` for tokens of at most ``max_depth`` core iterations; a clear error for an unknown
  strategy name."""
  match = _STRATEGY.match(str(strategy))
  if match is None:
    raise ValueError(f"Unknown cache strategy {strategy!r}; choose one of {', '.join(STRATEGIES)} "
                     "(e.g. 'compress-s4' or 'latest-m4-compress-s4').")
  rule, compression, s_m, r_m, alone = match.groups()
  compress, m = ("s", int(s_m)) if s_m else ("r", int(r_m)) if r_m else ("anchor", 0) if compression else ("", 0)
  if compress in ("s", "r") and m < 1:
    raise ValueError(f"cache strategy {strategy!r}: the compression stage must be >= 1.")
  lookup = _RULES[alone or rule or "full"]
  return CacheLayout(strategy=str(strategy), lookup=lookup, compress=compress, m=m,
                     n_prelude=config.n_layers_prelude, n_core=config.n_layers_core, n_coda=config.n_layers_coda,
                     max_depth=int(max_depth))


@flax.struct.dataclass
class KVCache:
  """Keys and values of every slot, plus the depth of every cached token.

  16-bit float caches are stored as their uint16 bit patterns (``k_store``/``v_store``; ``dtype`` names what they
  hold): XLA CPU runs dynamic slices, updates and gathers of bf16/f16 in float32, converting the whole operand (the
  entire cache, at every layer of every iteration) to f32 and back; on integers it updates in place. Reading one
  slot back costs a free bitcast. Other dtypes are stored as they are.
  """

  k_store: Array  # [slots, B, H, T, D]
  v_store: Array  # [slots, B, H, T, D]
  depth: Array  # [B, T] int32: core iterations computed for the token at each position
  dtype: str = flax.struct.field(pytree_node=False, default="float32")


def _storage_dtype(dtype) -> jnp.dtype:
  dtype = jnp.dtype(dtype)
  return jnp.dtype(jnp.uint16) if dtype in (jnp.bfloat16, jnp.float16) else dtype


def _to_storage(x: Array, dtype) -> Array:
  x = x.astype(dtype)
  store = _storage_dtype(dtype)
  return jax.lax.bitcast_convert_type(x, store) if store != x.dtype else x


def _from_storage(x: Array, dtype) -> Array:
  return jax.lax.bitcast_convert_type(x, jnp.dtype(dtype)) if x.dtype != jnp.dtype(dtype) else x


def init_cache(layout: CacheLayout, config, batch: int, max_len: int, dtype=None) -> KVCache:
  dtype = jnp.dtype(config.compute_dtype if dtype is None else dtype)
  shape = (layout.n_slots, batch, config.n_heads, max_len, config.head_dim)
  store = _storage_dtype(dtype)
  return KVCache(jnp.zeros(shape, store), jnp.zeros(shape, store), jnp.zeros((batch, max_len), jnp.int32),
                 dtype=dtype.name)


def _positions(start: Array, length: int, gate: Array, max_len: int) -> Array:
  """[B, C] write positions; rows with gate False get an out-of-range index, so their writes are dropped."""
  pos = start[:, None] + jnp.arange(length, dtype=jnp.int32)[None]
  return jnp.where(gate[:, None], pos, max_len)


def read_slot(cache: KVCache, slot) -> tuple[Array, Array]:
  """Keys and values [B, H, T, D] of one slot (a Python int or a traced int32)."""
  def take(arr):
    return _from_storage(jax.lax.dynamic_index_in_dim(arr, slot, 0, keepdims=False), cache.dtype)
  return take(cache.k_store), take(cache.v_store)


def write_kv(cache: KVCache, slot, start: Array, k: Array, v: Array, gate: Array) -> KVCache:
  """Stores k, v [B, C, H, D] of one layer in ``slot`` at positions start[b] .. start[b] + C - 1 (rows with gate)."""
  batch, length = k.shape[:2]
  pos = _positions(start, length, gate, cache.depth.shape[1])
  rows = jnp.arange(batch)[:, None]
  # Indices (slot, rows, pos) around the heads slice: the indexed region is [B, C, H, D], k's own layout.
  put = lambda arr, new: arr.at[slot, rows, :, pos].set(_to_storage(new, cache.dtype), mode="drop")  # noqa: E731
  return cache.replace(k_store=put(cache.k_store, k), v_store=put(cache.v_store, v))


def set_depth(cache: KVCache, start: Array, length: int, depth, gate: Array) -> KVCache:
  """Records that the tokens at start[b] .. start[b] + length - 1 have ``depth`` core iterations (rows with gate)."""
  batch, max_len = cache.depth.shape
  pos = _positions(start, length, gate, max_len)
  new = jnp.broadcast_to(jnp.asarray(depth, jnp.int32), (batch, length))
  return cache.replace(depth=cache.depth.at[jnp.arange(batch)[:, None], pos].set(new, mode="drop"))


def _written(layout: CacheLayout, depth: Array) -> Array:
  """[B, T] how many core slots (the first ones) each cached token wrote: ``layout.slots_written()[depth]``.

  Computed in closed form, not looked up in that table: slot k is first written by flat core index k*m under
  ``compress-r{m}`` and k otherwise, so a token of depth n wrote ceil(c*n / m) of them (m = 1 otherwise), at most
  all. Elementwise, it fuses into the attention mask; a table lookup is a gather, one more kernel per core layer
  and iteration of the decode loop.
  """
  flat = layout.n_core * jnp.clip(depth, 0, layout.max_depth)
  if layout.compress == "r" and layout.m > 1:  # ceil(flat / m); flat >= 0, so truncating division is exact here
    flat = jax.lax.div(flat + (layout.m - 1), jnp.int32(layout.m))
  return jnp.minimum(flat, layout.core_slots)


def _same_layer_at_most(layout: CacheLayout, rel, bound: Array) -> Array:
  """The largest core slot <= bound congruent to ``rel`` mod c (the same core layer); negative if none."""
  return bound - jnp.mod(bound - rel, layout.n_core)


def lookup_slots(layout: CacheLayout, depth: Array, slot, seen: Array | None = None) -> tuple[Array, Array]:
  """(core slot [B, T] each cached token is read at by a query of core ``slot``, whether it has one [B, T]).

  ``seen`` [B]: positions in the cache (the always-last rule switches a row over when one of them misses the slot;
  default every position with a depth).
  """
  rel = jnp.asarray(slot, jnp.int32) - layout.n_prelude
  written = _written(layout, depth)
  if layout.lookup == "full":
    return jnp.broadcast_to(rel, depth.shape), rel < written
  last = written - 1
  if layout.lookup == "latest":
    pick = _same_layer_at_most(layout, rel, jnp.minimum(rel, last))
  else:  # always-last: a row where some seen token misses the slot reads every token at its last written one
    positions = jnp.arange(depth.shape[1])[None]
    seen_mask = depth > 0 if seen is None else positions < seen[:, None]
    missing = jnp.any((rel >= written) & seen_mask, axis=1, keepdims=True)
    pick = jnp.where(missing, _same_layer_at_most(layout, rel, last), rel)
  return pick, pick >= 0


def core_visible(layout: CacheLayout, depth: Array, slot, seen: Array | None = None) -> Array:
  """[B, T] True where the token at that position has an entry for core ``slot`` under the lookup rule."""
  return lookup_slots(layout, depth, slot, seen)[1]


def read_core_kv(cache: KVCache, layout: CacheLayout, step, j: int, seen: Array | None = None) -> tuple[Array, Array]:
  """Keys and values [B, H, T, D] that core layer j at ``step`` attends to."""
  slot = layout.core_slot(step, j)
  if layout.lookup == "full":
    return read_slot(cache, slot)
  pick, _ = lookup_slots(layout, cache.depth, slot, seen)
  idx = (layout.n_prelude + jnp.maximum(pick, 0))[None, :, None, :, None]
  take = lambda arr: _from_storage(jnp.take_along_axis(arr, idx, axis=0)[0], cache.dtype)  # noqa: E731
  return take(cache.k_store), take(cache.v_store)


@_renamed_max_depth
def cache_bytes(config, strategy: str, max_depth: int, batch: int, max_len: int, dtype=None) -> int:
  """Bytes of the K and V arrays of a cache for tokens of at most ``max_depth`` core iterations (the small depth
  array aside)."""
  layout = cache_layout(strategy, config, max_depth)
  itemsize = jnp.dtype(config.compute_dtype if dtype is None else dtype).itemsize
  return 2 * layout.n_slots * batch * max_len * config.n_heads * config.head_dim * itemsize


@_renamed_max_depth
def memory_table(config, max_depth: int, batch: int = 1, max_len: int | None = None, dtype=None,
                 strategies=("full", "latest-m4", "compress-s4", "compress-s8", "compress-r4", "compress-r8",
                             "compress-anchor")) -> str:
  """A printable table of KV slots, bytes per token and total cache size of each strategy, for tokens of at most
  ``max_depth`` core iterations."""
  max_len = config.max_seq_len if max_len is None else max_len
  lines = [f"KV cache of {config.name} at r={max_depth}, batch {batch}, {max_len} positions "
           f"({jnp.dtype(config.compute_dtype if dtype is None else dtype).name}):",
           f"{'strategy':>15} {'slots':>6} {'MiB/token':>10} {'total GiB':>10}"]
  for name in strategies:
    layout = cache_layout(name, config, max_depth)
    total = cache_bytes(config, name, max_depth, batch, max_len, dtype)
    per_token = total / (batch * max_len)
    lines.append(f"{name:>15} {layout.n_slots:>6} {per_token / 2**20:>10.3f} {total / 2**30:>10.3f}")
  return "\n".join(lines)
