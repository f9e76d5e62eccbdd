"""Model FLOPs and bytes moved per token: the numerators of MFU and of memory-bandwidth utilization.

Matmuls count 2 FLOPs per multiply-add; norms, RoPE, softmax and other elementwise work are not counted (the usual
MFU convention, which makes figures comparable with the original's and with maxtext's). Attention counts its two
matmuls over the keys a query actually attends to (half the context on average for causal self-attention).
"""

from __future__ import annotations

import jax.numpy as jnp


def _block_matmul_flops(config) -> float:
  """FLOPs per token of one sandwich block's weight matmuls (qkv, output projection, gated MLP)."""
  d, i = config.d_model, config.intermediate_size
  attn = config.n_heads * config.head_dim
  return 2 * (3 * d * attn + attn * d + 3 * d * i)


def _attention_flops(config, keys: float) -> float:
  """FLOPs per query token of q.k and p.v against ``keys`` keys."""
  return 2 * 2 * config.n_heads * config.head_dim * keys


def core_step_flops(config, keys: float) -> float:
  """FLOPs per token of one recurrence: the adapter and every core block."""
  adapter = 2 * (2 * config.d_model) * config.d_model
  return adapter + config.n_layers_core * (_block_matmul_flops(config) + _attention_flops(config, keys))


def outer_flops(config, keys: float) -> float:
  """FLOPs per token outside the recurrence: prelude and coda blocks and the tied head."""
  blocks = config.n_layers_prelude + config.n_layers_coda
  head = 2 * config.d_model * config.vocab_size
  return blocks * (_block_matmul_flops(config) + _attention_flops(config, keys)) + head


def forward_flops_per_token(config, seq_len: int, num_steps: int) -> float:
  """Model FLOPs of one token of a ``seq_len``-token causal forward pass with ``num_steps`` core iterations."""
  keys = seq_len / 2
  return outer_flops(config, keys) + num_steps * core_step_flops(config, keys)


def train_flops_per_token(config, seq_len: int, n: float, k: float) -> float:
  """Model FLOPs of one training token for a step with n no-gradient and k gradient iterations.

  Parts with gradient (prelude, the k last core iterations, coda, head) cost 3x their forward; the n no-gradient
  iterations cost 1x. Recomputation by activation checkpointing is not model FLOPs and is not counted.
  """
  keys = seq_len / 2
  core, outer = core_step_flops(config, keys), outer_flops(config, keys)
  return 3.0 * (outer + k * core) + 1.0 * n * core


def decode_flops_per_token(config, context_len: int, num_steps: int) -> float:
  """Model FLOPs of one decoded token that attends to ``context_len`` cached positions (itself included)."""
  return outer_flops(config, context_len) + num_steps * core_step_flops(config, context_len)


def param_counts(config) -> dict[str, int]:
  """Parameters read by decoding, by part: ``core`` once per recurrence, ``outer`` (prelude, coda, norms, the head's
  full embedding matrix) once per token."""
  d = config.d_model
  attn = config.n_heads * config.head_dim
  block = 3 * d * attn + (2 * attn if config.qk_bias else 0) + attn * d + 3 * d * config.intermediate_size + 4 * d
  core = 2 * d * d + config.n_layers_core * block
  outer = (config.n_layers_prelude + config.n_layers_coda) * block + config.vocab_size * d + d
  return {"core": core, "outer": outer}


def decode_bytes_per_step(config, *, num_steps: int, batch: int, context_len: int, param_dtype=None,
                          cache_dtype=None) -> float:
  """Bytes one cached decode step must read from memory at least: the weights (the core's ``num_steps`` times,
  the batch shares them) and, for every (layer, iteration), that layer's keys and values of ``context_len``
  positions per row. KV sharing (``compress-*``) shrinks the cache but not these reads. This is the
  memory-bandwidth floor of decoding at small batch."""
  param_bytes = jnp.dtype(param_dtype or config.param_dtype).itemsize
  cache_bytes = jnp.dtype(cache_dtype or config.compute_dtype).itemsize
  counts = param_counts(config)
  weights = (counts["outer"] + num_steps * counts["core"]) * param_bytes
  layers_run = config.n_layers_prelude + config.n_layers_coda + num_steps * config.n_layers_core
  kv = layers_run * 2 * batch * context_len * config.n_heads * config.head_dim * cache_bytes
  return float(weights + kv)
