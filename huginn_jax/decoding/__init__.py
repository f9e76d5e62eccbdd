"""Decoding token ids: KV cache, jitted generation loop, exit criteria, sampling, speculative decoding, the
diffusion-style sampler, teacher-forced scoring.

Text (tokenizer, chat format, the interactive commands) is ``huginn_jax.text``."""

from huginn_jax.decoding.cache import STRATEGIES, cache_bytes, cache_layout, memory_table
from huginn_jax.decoding.diffusion import FREEZE_STRATEGIES, DiffusionOutput, generate_diffusion
from huginn_jax.decoding.exit_criteria import CRITERIA
from huginn_jax.decoding.generate import PAD_ID, STOP_IDS, GenerationOutput, generate

__all__ = ["CRITERIA", "DiffusionOutput", "FREEZE_STRATEGIES", "GenerationOutput", "PAD_ID", "STOP_IDS", "STRATEGIES",
           "cache_bytes", "cache_layout", "generate", "generate_diffusion", "memory_table"]
