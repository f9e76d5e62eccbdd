"""The KV cache of Huginn decoding: a preallocated pytree with static shapes and one slot per cached layer.

The original keeps a dict of KV entries per (layer, recurrence step) and per token. Here every entry lives in
``k_store``/``v_store`` arrays shaped [slots, B, T, H, D]; ``depth`` [B, T] records how many core iterations were
computed for the token at each position, which is all that is needed to know which core slots hold an entry for it.

Slots, with p prelude, c core and q coda layers and r recurrence steps (core layer j of step s has the flat index
f = c*s + j):

- ``full``: prelude i -> i; core f -> p + f; coda i -> p + c*r + i. (p + c*r + q slots, 132 at r=32.)
- ``compress-s{m}``: core f -> p + f mod m (m slots shared cyclically; m = c keeps one slot per core layer, so
  later tokens read the final-step KV of earlier tokens).
- ``compress-r{m}``: core f -> p + f // m (runs of m consecutive core layers share a slot).
- ``latest-m4``: the ``full`` layout, but a token that exited early is read at its latest computed step of the
  same core layer (the original hard-codes the 4-layer core in the name).

A query attends to a cached position if it is causally visible and, for a core slot, that position's token wrote
the slot (for ``full`` this means the token reached that step, the adaptive-compute rule of the original). With
``compress-r{m}`` and early exits the original raises when a slot misses a token; here the token is skipped.
"""

from __future__ import annotations

import dataclasses
import re

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_STRATEGY = re.compile(r"^(full|latest-m4|compress-s(\d+)|compress-r(\d+))$")
STRATEGIES = ("full", "latest-m4", "compress-s{m}", "compress-r{m}")


@dataclasses.dataclass(frozen=True)
class CacheLayout:
  """Static description of the slot mapping for a strategy, a model shape and a maximum recurrence."""

  strategy: str
  kind: str  # "full" | "latest" | "compress-s" | "compress-r"
  m: int  # the compression stage (0 unless compress-*)
  n_prelude: int
  n_core: int
  n_coda: int
  num_steps: int

  @property
  def core_slots(self) -> int:
    flat = self.n_core * self.num_steps
    if self.kind == "compress-s":
      return min(self.m, flat)
    if self.kind == "compress-r":
      return -(-flat // self.m)
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
    if self.kind == "compress-s":
      flat = flat % self.m
    elif self.kind == "compress-r":
      flat = flat // self.m
    return self.n_prelude + flat

  def first_writer(self) -> np.ndarray:
    """For each core slot, the smallest flat core index that writes it: a token of depth n wrote it iff < c*n."""
    rel = np.arange(self.core_slots)
    return rel * self.m if self.kind == "compress-r" else rel


def cache_layout(strategy: str, config, num_steps: int) -> CacheLayout:
  """Parses a strategy name; raises a clear error for an unknown one."""
  match = _STRATEGY.match(str(strategy))
  if match is None:
    raise ValueError(f"Unknown cache strategy {strategy!r}; choose one of {', '.join(STRATEGIES)} "
                     "(e.g. 'compress-s4').")
  name, s_m, r_m = match.groups()
  kind, m = ("compress-s", int(s_m)) if s_m else ("compress-r", int(r_m)) if r_m else (
      "latest" if name == "latest-m4" else "full", 0)
  if kind.startswith("compress") and m < 1:
    raise ValueError(f"cache strategy {strategy!r}: the compression stage must be >= 1.")
  return CacheLayout(strategy=name, kind=kind, m=m, n_prelude=config.n_layers_prelude, n_core=config.n_layers_core,
                     n_coda=config.n_layers_coda, num_steps=int(num_steps))


@flax.struct.dataclass
class KVCache:
  """Keys and values of every slot, plus the depth of every cached token.

  16-bit float caches are stored as their uint16 bit patterns (``k_store``/``v_store``; ``dtype`` names what they
  hold): XLA CPU runs dynamic slices, updates and gathers of bf16/f16 in float32, converting the whole operand (the
  entire cache, at every layer of every iteration) to f32 and back; on integers it updates in place. Reading one
  slot back costs a free bitcast. Other dtypes are stored as they are.
  """

  k_store: Array  # [slots, B, T, H, D]
  v_store: Array  # [slots, B, T, H, D]
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
  shape = (layout.n_slots, batch, max_len, config.n_heads, config.head_dim)
  store = _storage_dtype(dtype)
  return KVCache(jnp.zeros(shape, store), jnp.zeros(shape, store), jnp.zeros((batch, max_len), jnp.int32),
                 dtype=dtype.name)


def _positions(start: Array, length: int, gate: Array, max_len: int) -> Array:
  """[B, C] write positions; rows with gate False get an out-of-range index, so their writes are dropped."""
  pos = start[:, None] + jnp.arange(length, dtype=jnp.int32)[None]
  return jnp.where(gate[:, None], pos, max_len)


def read_slot(cache: KVCache, slot) -> tuple[Array, Array]:
  """Keys and values [B, T, H, D] of one slot (a Python int or a traced int32)."""
  def take(arr):
    return _from_storage(jax.lax.dynamic_index_in_dim(arr, slot, 0, keepdims=False), cache.dtype)
  return take(cache.k_store), take(cache.v_store)


def write_kv(cache: KVCache, slot, start: Array, k: Array, v: Array, gate: Array) -> KVCache:
  """Stores k, v [B, C, H, D] of one layer in ``slot`` at positions start[b] .. start[b] + C - 1 (rows with gate)."""
  batch, length = k.shape[:2]
  pos = _positions(start, length, gate, cache.depth.shape[1])
  rows = jnp.arange(batch)[:, None]
  put = lambda arr, new: arr.at[slot, rows, pos].set(_to_storage(new, cache.dtype), mode="drop")  # noqa: E731
  return cache.replace(k_store=put(cache.k_store, k), v_store=put(cache.v_store, v))


def set_depth(cache: KVCache, start: Array, length: int, depth, gate: Array) -> KVCache:
  """Records that the tokens at start[b] .. start[b] + length - 1 have ``depth`` core iterations (rows with gate)."""
  batch, max_len = cache.depth.shape
  pos = _positions(start, length, gate, max_len)
  new = jnp.broadcast_to(jnp.asarray(depth, jnp.int32), (batch, length))
  return cache.replace(depth=cache.depth.at[jnp.arange(batch)[:, None], pos].set(new, mode="drop"))


def core_visible(layout: CacheLayout, depth: Array, slot) -> Array:
  """[B, T] True where the token at that position wrote core ``slot`` (it ran enough iterations).

  Under ``latest-m4`` every token that ran at least one iteration is visible (it is read at its latest step).
  """
  if layout.kind == "latest":
    return depth > 0
  first = jnp.asarray(layout.first_writer(), jnp.int32)[jnp.asarray(slot) - layout.n_prelude]
  return first < depth * layout.n_core


def read_core_kv(cache: KVCache, layout: CacheLayout, step, j: int) -> tuple[Array, Array]:
  """Keys and values [B, T, H, D] that core layer j at ``step`` attends to."""
  if layout.kind != "latest":
    return read_slot(cache, layout.core_slot(step, j))
  # latest-m4: each position is read at min(step, its last computed step), of the same core layer.
  last = jnp.clip(jnp.minimum(step, cache.depth - 1), 0, None)  # [B, T]
  idx = layout.core_slot(last, j)[None, :, :, None, None]
  take = lambda arr: _from_storage(jnp.take_along_axis(arr, idx, axis=0)[0], cache.dtype)  # noqa: E731
  return take(cache.k_store), take(cache.v_store)


def cache_bytes(config, strategy: str, num_steps: int, batch: int, max_len: int, dtype=None) -> int:
  """Bytes of the K and V arrays of a cache (the small depth array aside)."""
  layout = cache_layout(strategy, config, num_steps)
  itemsize = jnp.dtype(config.compute_dtype if dtype is None else dtype).itemsize
  return 2 * layout.n_slots * batch * max_len * config.n_heads * config.head_dim * itemsize


def memory_table(config, num_steps: int, batch: int = 1, max_len: int | None = None, dtype=None,
                 strategies=("full", "latest-m4", "compress-s4", "compress-s8", "compress-r4", "compress-r8")) -> str:
  """A printable table of KV slots, bytes per token and total cache size of each strategy."""
  max_len = config.max_seq_len if max_len is None else max_len
  lines = [f"KV cache of {config.name} at r={num_steps}, batch {batch}, {max_len} positions "
           f"({jnp.dtype(config.compute_dtype if dtype is None else dtype).name}):",
           f"{'strategy':>12} {'slots':>6} {'MiB/token':>10} {'total GiB':>10}"]
  for name in strategies:
    layout = cache_layout(name, config, num_steps)
    total = cache_bytes(config, name, num_steps, batch, max_len, dtype)
    per_token = total / (batch * max_len)
    lines.append(f"{name:>12} {layout.n_slots:>6} {per_token / 2**20:>10.3f} {total / 2**30:>10.3f}")
  return "\n".join(lines)
