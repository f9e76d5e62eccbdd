"""Attention backends behind one switch (``config.attention_impl``).

- ``"auto"`` (the default): the fastest backend that supports the call: cuDNN flash attention on an NVIDIA GPU
  with bf16/fp16 activations, the Pallas splash kernel on TPU, XLA otherwise and for decoding against a KV cache
  (dense masks, queries shorter than keys). On CPU it is ``"blocked"`` for causal
  self-attention without padding (training, prefill) and ``"xla"`` otherwise.
- ``"xla"``: plain einsum + softmax; runs everywhere and is the reference the others are tested against.
- ``"cudnn"``: cuDNN flash attention through ``jax.nn.dot_product_attention(implementation="cudnn")``; NVIDIA GPUs
  with bfloat16/float16 activations only. Asking for it elsewhere raises an error naming the fix (no silent
  fallback: a user who asked for flash attention should learn that they are not getting it).
- ``"pallas"``: the Pallas TPU splash-attention kernel. Huginn's head_dim 96 is zero-padded to the kernel's 128 lanes
  (the softmax scale stays 1/sqrt(96)) and the sequence to a multiple of the kernel block. Off TPU the same kernel
  runs in the Pallas interpreter (slow, with a warning), which is how the tests exercise it on CPU.
- ``"blocked"``: causal self-attention without padding computed one block of ``QUERY_BLOCK`` queries at a time
  against the keys up to the block's end, with heads-major scores. It never forms the masked half of the score
  matrix, and XLA CPU runs heads-major batched matmuls faster than the ``"xla"`` layout: at 256-512 tokens, 8
  heads of 64, forward+backward took 4.3-10.7 ms against 7.4-26.8 (benchmarks/README.md). ``"auto"`` picks it on
  CPU for causal self-attention without padding; anything else falls back to ``"xla"``.

Masks: the model's self-attention mask is a ``SelfAttentionMask`` (causal, optionally excluding padding keys) rather
than a dense [S, T] array, so flash kernels can skip masked blocks and take padding as segment ids. Any dense
boolean mask broadcastable to [B, H, S, T] is accepted too (decoding against a KV cache builds those); with a dense
mask, or when queries and keys differ in length, the ``"pallas"`` backend computes with XLA, since the kernel takes
only the structured mask and gains nothing for the short query blocks of decoding.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp

from huginn_jax.sharding import active_rules

Array = jax.Array

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "pallas", "blocked")
NEG_INF = -1e30  # finite, so fully masked rows give a uniform distribution instead of NaN

LANES = 128  # the TPU vector lane width: the kernel's head_dim and sequence blocks are multiples of it
QUERY_BLOCK = 128  # "blocked": queries per block (128 beat 64 and 256 at 256-512 tokens on a 2-core x86 CPU)
BLOCKS = (512, 256, 128)  # kernel tile sizes tried, largest first; the padded sequence length picks one


def causal_mask(q_len: int, kv_len: int, q_offset: Array | int = 0) -> Array:
  """[1, 1, S, T] mask: query i (at absolute position q_offset + i) sees keys at positions <= its own."""
  q_pos = jnp.arange(q_len)[:, None] + q_offset
  return (jnp.arange(kv_len)[None, :] <= q_pos)[None, None]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SelfAttentionMask:
  """Causal self-attention (queries and keys are the same positions), optionally without padding keys.

  ``kv_valid`` [B, T] is True for real tokens. Passed through the model in place of a dense mask; ``dense`` gives
  the [B|1, 1, S, T] boolean form that XLA attention uses.
  """

  kv_valid: Array | None = None

  def dense(self, q_len: int, kv_len: int) -> Array:
    mask = causal_mask(q_len, kv_len)
    if self.kv_valid is not None:
      mask = mask & self.kv_valid.astype(bool)[:, None, None, :]
    return mask


def as_dense(mask, q_len: int, kv_len: int) -> Array | None:
  """The boolean array form of any mask this module accepts (None stays None: attend everywhere)."""
  return mask.dense(q_len, kv_len) if isinstance(mask, SelfAttentionMask) else mask


KV_LAYOUTS = ("bthd", "bhtd")  # keys and values [B, T, H, D] (the layers' own), or [B, H, T, D] (a KV cache's)


def xla_attention(q: Array, k: Array, v: Array, mask=None, kv_layout: str = "bthd") -> Array:
  """Reference attention: scores and softmax in float32, probabilities cast to the value dtype. q [B,S,H,D]; k, v
  in ``kv_layout``."""
  kv = _check_kv_layout(kv_layout)
  mask = as_dense(mask, q.shape[1], k.shape[kv.index("t")])
  scale = 1.0 / math.sqrt(q.shape[-1])
  scores = jnp.einsum(f"bshd,{kv}->bhst", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    scores = jnp.where(mask, scores, NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum(f"bhst,{kv}->bshd", probs, v)


def _check_kv_layout(kv_layout: str) -> str:
  if kv_layout not in KV_LAYOUTS:
    raise ValueError(f"Unknown kv_layout {kv_layout!r}; choose one of {KV_LAYOUTS}.")
  return kv_layout


def is_plain_causal(mask) -> bool:
  """Causal self-attention without padding keys: the case ``blocked_attention`` computes."""
  return isinstance(mask, SelfAttentionMask) and mask.kv_valid is None


def blocked_attention(q: Array, k: Array, v: Array, mask=None, block: int = QUERY_BLOCK) -> Array:
  """Causal self-attention, one block of queries at a time against the keys up to the block's end (the same values
  as ``xla_attention`` up to the order of the sums); other masks go to ``xla_attention``. Scores in float32."""
  if not is_plain_causal(mask) or q.shape[1] != k.shape[1]:
    return xla_attention(q, k, v, mask)
  seq = q.shape[1]
  scale = 1.0 / math.sqrt(q.shape[-1])
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, H, S, D]: heads-major batched matmuls
  outs = []
  for start in range(0, seq, block):
    end = min(start + block, seq)
    scores = jnp.einsum("bhsd,bhtd->bhst", q[:, :, start:end], k[:, :, :end],
                        preferred_element_type=jnp.float32) * scale  # [B, H, end - start, end]
    allowed = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]
    probs = jax.nn.softmax(jnp.where(allowed, scores, NEG_INF), axis=-1).astype(v.dtype)
    outs.append(jnp.einsum("bhst,bhtd->bhsd", probs, v[:, :, :end]))
  return jnp.swapaxes(jnp.concatenate(outs, axis=2), 1, 2)


def cudnn_attention(q: Array, k: Array, v: Array, mask=None) -> Array:
  """cuDNN flash attention (NVIDIA GPU, bf16/fp16); the causal structure goes to cuDNN as a mask type."""
  backend = jax.default_backend()
  if backend != "gpu":
    raise ValueError(f"attention_impl='cudnn' runs cuDNN flash attention, which needs an NVIDIA GPU with a CUDA "
                     f"build of jax (pip install 'jax[cuda12]'), but the jax backend here is {backend!r}. Set "
                     "config.attention_impl='xla' (any backend) or 'pallas' (TPU).")
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"attention_impl='cudnn' needs bfloat16 or float16 activations, got {q.dtype}. Set "
                     "config.compute_dtype='bfloat16', or config.attention_impl='xla' for float32.")
  if isinstance(mask, SelfAttentionMask):
    padding = None
    if mask.kv_valid is not None:
      b, s, _, _ = q.shape
      padding = jnp.broadcast_to(mask.kv_valid.astype(bool)[:, None, None, :], (b, 1, s, k.shape[1]))
    return jax.nn.dot_product_attention(q, k, v, mask=padding, is_causal=True, implementation="cudnn")
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, seq: int, causal: bool, interpret: bool):
  """The splash kernel for [heads, seq, head_dim] inputs (one batch row); seq is a multiple of LANES."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  block = next(b for b in BLOCKS if seq % b == 0)
  shape = (seq, seq)
  head_mask = splash.CausalMask(shape) if causal else splash.FullMask(shape)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  return splash.make_splash_mha(splash.MultiHeadMask([head_mask] * heads), head_shards=1, q_seq_shards=1,
                                block_sizes=sizes, interpret=interpret)


def _splash(q: Array, k: Array, v: Array, kv_valid: Array | None, *, causal: bool, interpret: bool) -> Array:
  """Splash attention on [B, S, H, D] inputs: pads head_dim to LANES and S to a block, then slices back.

  Padding bookkeeping: zero columns added to q and k leave q.k unchanged and zero columns of v give zero output
  columns, so slicing restores the exact result. Padded sequence positions sit after the real ones, so causal
  rows never see them; when they could (no causal mask) or when padding keys must be excluded, segment ids do it
  (real = 1, padding = 0). Every row keeps at least one visible key (itself), so no row is empty (no NaN).
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  batch, seq, heads, head_dim = q.shape
  scale = 1.0 / math.sqrt(head_dim)
  seq_p, dim_p = _round_up(seq, LANES), _round_up(head_dim, LANES)
  q = (q.astype(jnp.float32) * scale).astype(q.dtype)  # the kernel has no softmax scale; it goes on q

  def to_kernel(x):  # [B, S, H, D] -> [B, H, S_p, D_p]
    x = jnp.swapaxes(x, 1, 2)
    return jnp.pad(x, ((0, 0), (0, 0), (0, seq_p - seq), (0, dim_p - head_dim)))

  kernel = _splash_kernel(heads, seq_p, causal, interpret)
  qp, kp, vp = to_kernel(q), to_kernel(k), to_kernel(v)
  if kv_valid is not None or (not causal and seq_p != seq):
    real = jnp.ones((batch, seq), jnp.int32) if kv_valid is None else kv_valid.astype(jnp.int32)
    ids = jnp.pad(real, ((0, 0), (0, seq_p - seq)))
    out = jax.vmap(lambda q, k, v, ids: kernel(q, k, v, segment_ids=splash.SegmentIds(q=ids, kv=ids)))(
        qp, kp, vp, ids)
  else:
    out = jax.vmap(kernel)(qp, kp, vp)
  return jnp.swapaxes(out[:, :, :seq, :head_dim], 1, 2).astype(v.dtype)


def _rule_axes(logical: str) -> tuple[str, ...]:
  """The mesh axes the active sharding rules give an activation axis (``huginn_jax.sharding``)."""
  axes = active_rules().get(logical)
  return () if axes is None else (axes if isinstance(axes, tuple) else (axes,))


def _kernel_partition(mesh, batch: int, heads: int) -> tuple[tuple[str, ...], str | None]:
  """Mesh axes for the kernel's batch and head dims, from the rules of "act_batch" and "act_heads": the batch axes
  whose sizes keep dividing the batch, and the head axis if it divides the head count (Huginn's 55 heads divide
  only by 5, 11, 55; otherwise each tensor shard computes all heads of its batch rows)."""
  batch_axes, size = [], 1
  for name in _rule_axes("act_batch"):
    if name in mesh.axis_names and mesh.shape[name] > 1 and batch % (size * mesh.shape[name]) == 0:
      batch_axes.append(name)
      size *= mesh.shape[name]
  head_axis = None
  for name in _rule_axes("act_heads")[:1]:
    if name in mesh.axis_names and mesh.shape[name] > 1 and heads % mesh.shape[name] == 0:
      head_axis = name
  return tuple(batch_axes), head_axis


def _target_platform(mesh) -> str:
  """The platform the code is compiled for: the mesh's devices (which may be compile-only TPU devices of an
  ahead-of-time topology on a CPU host), else the default backend."""
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return getattr(device, "platform", None) or jax.default_backend()


def pallas_attention(q: Array, k: Array, v: Array, mask=None, *, interpret: bool | None = None) -> Array:
  """The Pallas TPU splash kernel, with padding, the 1/sqrt(head_dim) scale and the mask translated for it.

  ``interpret`` defaults to True unless compiling for TPU (with a warning: the interpreter is slow). Under a mesh
  set with ``jax.set_mesh`` the kernel runs per shard through ``jax.shard_map`` (batch and heads over the mesh
  axes of the "act_batch" and "act_heads" sharding rules); without one it runs on whole arrays. Dense masks and
  S != T go through ``xla_attention`` (see the module doc).
  """
  seq, kv_len = q.shape[1], k.shape[1]
  if (mask is not None and not isinstance(mask, SelfAttentionMask)) or seq != kv_len:
    return xla_attention(q, k, v, mask)
  mesh = jax.sharding.get_abstract_mesh()
  if interpret is None:
    platform = _target_platform(mesh)
    interpret = platform != "tpu"
    if interpret:
      warnings.warn(f"attention_impl='pallas' on the {platform!r} backend runs the Pallas TPU splash kernel in the "
                    "Pallas interpreter, which is slow and meant for tests; use attention_impl='xla' off TPU.",
                    stacklevel=2)
  causal = mask is not None
  kv_valid = mask.kv_valid if causal else None
  body = functools.partial(_splash, causal=causal, interpret=interpret)

  if mesh.empty or mesh.size == 1 or mesh.manual_axes:  # no mesh, or already inside a shard_map: arrays are local
    return body(q, k, v, kv_valid)
  batch_axes, head_axis = _kernel_partition(mesh, q.shape[0], q.shape[2])
  P = jax.sharding.PartitionSpec
  specs = (P(batch_axes or None, None, head_axis, None),) * 3
  args = (q, k, v)
  if kv_valid is not None:
    specs, args = specs + (P(batch_axes or None, None),), args + (kv_valid,)
  if mesh.explicit_axes:  # explicit-sharding meshes type every array by its sharding; shard_map wants them to agree
    args = tuple(jax.reshard(x, spec) for x, spec in zip(args, specs))
  kernel = jax.shard_map(lambda q, k, v, *valid: body(q, k, v, *(valid or (None,))), in_specs=specs,
                         out_specs=specs[0], check_vma=False)
  return kernel(*args)


def auto_impl(q: Array, k: Array, mask=None) -> str:
  """The backend ``"auto"`` picks for these inputs on the platform being compiled for."""
  structured = mask is None or isinstance(mask, SelfAttentionMask)
  if not structured or q.shape[1] != k.shape[1]:
    return "xla"  # decoding against a cache: short query blocks, dense masks
  platform = _target_platform(jax.sharding.get_abstract_mesh())
  head_dim = q.shape[-1]
  if platform == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128:
    return "cudnn"
  if platform == "tpu":
    return "pallas"
  if platform == "cpu" and is_plain_causal(mask):
    return "blocked"
  return "xla"


_warned_fallback = set()


def _auto_attention(q: Array, k: Array, v: Array, mask=None) -> Array:
  impl = auto_impl(q, k, mask)
  if impl == "cudnn":
    try:
      return cudnn_attention(q, k, v, mask)
    except (ValueError, NotImplementedError, RuntimeError) as err:  # cuDNN rejects the shape or is too old
      if str(err) not in _warned_fallback:
        _warned_fallback.add(str(err))
        warnings.warn(f"attention_impl='auto': cuDNN flash attention is unavailable ({err}); using XLA attention.",
                      stacklevel=3)
      return xla_attention(q, k, v, mask)
  return dot_product_attention(q, k, v, mask, impl)


def dot_product_attention(q: Array, k: Array, v: Array, mask=None, impl: str = "auto",
                          kv_layout: str = "bthd") -> Array:
  """Scaled dot-product attention. q [B,S,H,D], k/v [B,T,H,D] (or [B,H,T,D] with ``kv_layout="bhtd"``, as a KV
  cache holds them); mask is None (attend everywhere), a ``SelfAttentionMask``, or booleans broadcastable to
  [B,H,S,T] (True = attend). ``impl`` picks the backend.

  Heads-major keys come with the dense masks of decoding, which every backend but cuDNN computes with XLA anyway:
  XLA reads them as they lie; cuDNN gets them swapped to [B,T,H,D]."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"Unknown attention implementation {impl!r}; choose one of {IMPLEMENTATIONS}.")
  if _check_kv_layout(kv_layout) == "bhtd":
    if impl != "cudnn":
      return xla_attention(q, k, v, mask, kv_layout)
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
  if impl == "auto":
    return _auto_attention(q, k, v, mask)
  if impl == "xla":
    return xla_attention(q, k, v, mask)
  if impl == "cudnn":
    return cudnn_attention(q, k, v, mask)
  if impl == "pallas":
    return pallas_attention(q, k, v, mask)
  return blocked_attention(q, k, v, mask)
