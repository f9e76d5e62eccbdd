"""Decoding token ids: KV cache, jitted generation loop, exit criteria, sampling, speculative decoding.

Text (tokenizer, chat format, the interactive commands) is ``huginn_jax.text``."""

from huginn_jax.decoding.cache import STRATEGIES, cache_bytes, cache_layout, memory_table
from huginn_jax.decoding.exit_criteria import CRITERIA
from huginn_jax.decoding.generate import PAD_ID, STOP_IDS, GenerationOutput, generate

__all__ = ["CRITERIA", "GenerationOutput", "PAD_ID", "STOP_IDS", "STRATEGIES", "cache_bytes", "cache_layout",
           "generate", "memory_table"]
