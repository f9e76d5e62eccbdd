"""Model configs: named presets, HF ``config.json`` conversion, and validation.

A config is an ``ml_collections.ConfigDict``. Shape fields describe the network; ``param_dtype`` /
``compute_dtype`` are the dtype policy (float32 for parity with the original, bfloat16 for speed; norms and
RoPE always run in float32).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

import ml_collections

from huginn_jax.attention import IMPLEMENTATIONS

DTYPES = ("float32", "bfloat16", "float16")  # the floating dtypes params and compute may take

# The fields that fix the shape of the parameters: two configs that agree on them can load each other's weights.
SHAPE_FIELDS = ("vocab_size", "d_model", "n_heads", "head_dim", "intermediate_size", "n_layers_prelude",
                "n_layers_core", "n_layers_coda", "qk_bias")

# Fields that older versions kept in the model config and that now live elsewhere (see the README's changelog):
# ``remat_policy`` is a training choice (``train.remat_policy``, or the ``remat_policy`` argument of ``hj.loss``).
RETIRED_FIELDS = ("remat_policy",)


def shape_fields(config) -> dict[str, Any]:
  """The ``SHAPE_FIELDS`` of a config (a ConfigDict or a plain dict, e.g. one read from a checkpoint's JSON)."""
  return {k: config.get(k) for k in SHAPE_FIELDS}


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "base"
  c.vocab_size = 65536  # the padded vocabulary: rows of wte
  c.d_model = 5280
  c.n_heads = 55
  c.head_dim = 96
  c.intermediate_size = 17920  # fc is [2 * intermediate_size, d] in torch layout (gate | up)
  c.n_layers_prelude = 2
  c.n_layers_core = 4
  c.n_layers_coda = 2
  c.max_seq_len = 4096
  c.norm_eps = 1e-6
  c.rope_base = 50000.0
  c.qk_bias = True
  c.tie_embeddings = True
  c.mean_recurrence = 32
  c.mean_backprop_depth = 8
  c.param_dtype = "float32"
  c.compute_dtype = "float32"
  # A runtime choice, not part of the checkpoint's identity (``shape_fields``): any backend computes the same model.
  c.attention_impl = "auto"  # "auto" (fastest that fits) | "xla" | "cudnn" (GPU) | "pallas" (TPU) | "blocked" (CPU)
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every field with its documented default (the published model's shape, float32)."""
  return _base()


def huginn_0125() -> ml_collections.ConfigDict:
  """The published Huginn-0125 ("nebel-raven-3.5b"): 3,564,976,800 parameters."""
  c = _base()
  c.name = "huginn-0125"
  c.param_dtype = "bfloat16"
  c.compute_dtype = "bfloat16"
  return c


def tiny() -> ml_collections.ConfigDict:
  """The shape of the golden test fixture (d=64, 4 heads of 16, vocab 256)."""
  c = _base()
  c.name = "tiny"
  c.vocab_size = 256
  c.d_model = 64
  c.n_heads = 4
  c.head_dim = 16
  c.intermediate_size = 160
  c.max_seq_len = 256
  c.mean_recurrence = 8
  c.mean_backprop_depth = 4
  return c


def small() -> ml_collections.ConfigDict:
  """A ~100M-parameter Huginn for laptop experiments and smoke runs on one accelerator."""
  c = _base()
  c.name = "small"
  c.vocab_size = 65536
  c.d_model = 768
  c.n_heads = 12
  c.head_dim = 64
  c.intermediate_size = 2048
  c.max_seq_len = 1024
  c.mean_recurrence = 16
  c.mean_backprop_depth = 4
  return c


PRESETS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "huginn-0125": huginn_0125,
    "tiny": tiny,
    "small": small,
}


def get_config(name: str = "huginn-0125", **overrides: Any) -> ml_collections.ConfigDict:
  """Returns a validated copy of the named preset, with ``overrides`` applied."""
  config = from_preset(PRESETS, name, overrides)
  validate(config)
  return config


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks a config for internal consistency; raises ``ValueError`` naming the field and the fix."""
  positive = ("vocab_size", "d_model", "n_heads", "head_dim", "intermediate_size", "n_layers_core",
              "max_seq_len", "mean_recurrence")
  for field in positive:
    if not isinstance(config[field], int) or config[field] <= 0:
      raise ValueError(f"config.{field} must be a positive integer, got {config[field]!r}.")
  for field in ("n_layers_prelude", "n_layers_coda", "mean_backprop_depth"):
    if not isinstance(config[field], int) or config[field] < 0:
      raise ValueError(f"config.{field} must be a non-negative integer, got {config[field]!r}.")
  if config.n_heads * config.head_dim != config.d_model:
    raise ValueError(
        f"config.d_model ({config.d_model}) must equal n_heads * head_dim ({config.n_heads} * {config.head_dim} = "
        f"{config.n_heads * config.head_dim}); set head_dim = d_model // n_heads with d_model divisible by n_heads.")
  if config.head_dim % 2:
    raise ValueError(f"config.head_dim must be even for rotary embeddings, got {config.head_dim}.")
  if config.norm_eps <= 0:
    raise ValueError(f"config.norm_eps must be positive, got {config.norm_eps}.")
  if config.rope_base <= 1:
    raise ValueError(f"config.rope_base must be > 1, got {config.rope_base}.")
  for field in ("param_dtype", "compute_dtype"):
    if config[field] not in DTYPES:
      raise ValueError(f"config.{field} must be one of {DTYPES}, got {config[field]!r}.")
  if config.attention_impl not in IMPLEMENTATIONS:
    raise ValueError(f"config.attention_impl must be one of {IMPLEMENTATIONS}, got {config.attention_impl!r}.")
  if not config.tie_embeddings:
    raise ValueError("config.tie_embeddings=False is not supported: Huginn ties lm_head to wte.")
  return config


def init_std(config: ml_collections.ConfigDict) -> float:
  """The base init std of the original, sqrt(2 / (5 d)); also the std of the random initial latent state."""
  return math.sqrt(2.0 / (5.0 * config.d_model))


def embed_scale(config: ml_collections.ConfigDict) -> float:
  """The embedding is multiplied by sqrt(d) (not the tied head)."""
  return math.sqrt(config.d_model)


def num_params(config: ml_collections.ConfigDict) -> int:
  """Parameter count from the shape alone (tied head counted once)."""
  d, i = config.d_model, config.intermediate_size
  block = 4 * d + 3 * d * d + (2 * d if config.qk_bias else 0) + d * d + 2 * i * d + i * d
  blocks = config.n_layers_prelude + config.n_layers_core + config.n_layers_coda
  return blocks * block + config.vocab_size * d + 2 * d * d + d


# --- HF config.json <-> ConfigDict -------------------------------------------------------------------------------

# Keys of the original's config that must hold these values for our implementation to be exact.
_HF_REQUIRED = {
    "block_class_name": "SandwichBlock",
    "mlp_class_name": "GatedMLP",
    "nonlin_name": "SiLU",
    "norm_class_name": "RMSNorm_llama",
    "injection_type": "linear",
    "bias": False,
}


def from_hf_config(hf: dict[str, Any] | str | os.PathLike, **overrides: Any) -> ml_collections.ConfigDict:
  """Builds our config from the original's HF ``config.json`` (a dict or a path); unrelated keys are ignored.
  Errors name the file and the field."""
  source = "HF config"
  if not isinstance(hf, dict):
    source = os.fspath(hf)
    try:
      with open(hf) as f:
        hf = json.load(f)
    except json.JSONDecodeError as err:
      raise ValueError(f"{source} is not valid JSON ({err}); take config.json from the checkpoint's HF repo.") from None
    if not isinstance(hf, dict):
      raise ValueError(f"{source} must hold a JSON object of config fields, got a {type(hf).__name__}.")
  try:
    return _from_hf_fields(hf, overrides)
  except ValueError as err:
    raise ValueError(f"{source}: {err}") from None


def _hf_int(hf: dict, *keys: str, default=None) -> int:
  """The integer field ``keys[0]`` (or an alias after it) of an HF config; missing without a default is an error."""
  for key in keys:
    if key in hf:
      value = hf[key]
      if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise ValueError(f"field {key!r} must be an integer, got {value!r}.")
      return int(value)
  if default is None:
    raise ValueError(f"missing the required field {keys[0]!r}; is this a Huginn (huginn_raven) config.json?")
  return default


def _hf_float(hf: dict, key: str, default: float) -> float:
  value = hf.get(key, default)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"field {key!r} must be a number, got {value!r}.")
  return float(value)


def _from_hf_fields(hf: dict[str, Any], overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  for key, expected in _HF_REQUIRED.items():
    if key in hf and hf[key] != expected:
      raise ValueError(f"HF config {key}={hf[key]!r} is not supported (huginn-jax implements {key}={expected!r}).")
  if hf.get("test_time_noise", 0):
    raise ValueError(f"HF config test_time_noise={hf['test_time_noise']} is not supported; set it to 0.")
  if hf.get("num_key_value_heads", hf.get("n_heads")) != hf.get("n_heads", hf.get("num_attention_heads")):
    raise ValueError("HF config num_key_value_heads differs from n_heads: grouped-query attention is not supported.")
  config = _base()
  config.name = str(hf.get("_name_or_path") or "from-hf")
  config.vocab_size = _hf_int(hf, "padded_vocab_size", "vocab_size")
  config.d_model = _hf_int(hf, "n_embd")
  config.n_heads = _hf_int(hf, "n_heads", "num_attention_heads")
  if config.n_heads <= 0:
    raise ValueError(f"field 'n_heads' must be positive, got {config.n_heads}.")
  config.head_dim = _hf_int(hf, "head_dim", default=config.d_model // config.n_heads)
  config.intermediate_size = _hf_int(hf, "intermediate_size")
  config.n_layers_prelude = _hf_int(hf, "n_layers_in_prelude", default=2)
  config.n_layers_core = _hf_int(hf, "n_layers_in_recurrent_block", default=4)
  config.n_layers_coda = _hf_int(hf, "n_layers_in_coda", default=2)
  config.max_seq_len = _hf_int(hf, "block_size", default=4096)
  config.norm_eps = _hf_float(hf, "norm_eps", 1e-6)
  config.rope_base = _hf_float(hf, "rope_base", 50000.0)
  config.qk_bias = bool(hf.get("qk_bias", True))
  config.tie_embeddings = bool(hf.get("tie_embeddings", hf.get("tie_word_embeddings", True)))
  config.mean_recurrence = _hf_int(hf, "mean_recurrence", default=32)
  config.mean_backprop_depth = _hf_int(hf, "mean_backprop_depth", default=8)
  for key, value in overrides.items():
    config[key] = value
  return validate(config)


def to_hf_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The original's ``config.json`` fields for this config (what ``RavenConfig`` reads)."""
  d = config.d_model
  n_layers = config.n_layers_prelude + config.n_layers_core + config.n_layers_coda
  return {
      "architectures": ["RavenForCausalLM"],
      "model_type": "huginn_raven",
      "architecture_class_name": "RecurrentGPT",
      "block_class_name": "SandwichBlock",
      "mlp_class_name": "GatedMLP",
      "nonlin_name": "SiLU",
      "norm_class_name": "RMSNorm_llama",
      "injection_type": "linear",
      "init_strategy": "takase",
      "state_init": "like-init",
      "sampling_scheme": "poisson-lognormal-filling",
      "bias": False,
      "qk_bias": bool(config.qk_bias),
      "n_embd": d,
      "n_heads": config.n_heads,
      "num_key_value_heads": config.n_heads,
      "head_dim": config.head_dim,
      "intermediate_size": config.intermediate_size,
      "n_layers": n_layers,
      "n_layers_in_prelude": config.n_layers_prelude,
      "n_layers_in_recurrent_block": config.n_layers_core,
      "n_layers_in_coda": config.n_layers_coda,
      "vocab_size": config.vocab_size,
      "padded_vocab_size": config.vocab_size,
      "padding_multiple": 1,
      "block_size": config.max_seq_len,
      "norm_eps": config.norm_eps,
      "rope_base": config.rope_base,
      "tie_embeddings": bool(config.tie_embeddings),
      "tie_word_embeddings": bool(config.tie_embeddings),
      "mean_recurrence": config.mean_recurrence,
      "mean_backprop_depth": config.mean_backprop_depth,
      "effective_expected_depth": config.n_layers_prelude + config.n_layers_coda
      + config.n_layers_core * config.mean_recurrence,
      "activation_checkpoint_impl": "per-iteration",
      "test_time_noise": 0,
      "test_time_noise_type": "fixed",
      "torch_dtype": config.param_dtype,
  }


def frozen(config) -> ml_collections.FrozenConfigDict:
  """A hashable snapshot of the config, for caches and static arguments of ``jax.jit``."""
  if isinstance(config, ml_collections.FrozenConfigDict):
    return config
  if not isinstance(config, ml_collections.ConfigDict):
    raise TypeError(f"config must be an ml_collections.ConfigDict (from hj.get_config), got {type(config).__name__}.")
  return ml_collections.FrozenConfigDict(config)


def from_preset(presets: dict, name: str, overrides: dict, kind: str = "config") -> ml_collections.ConfigDict:
  """A fresh copy of ``presets[name]()`` with top-level ``overrides`` applied; errors name the bad key."""
  if name not in presets:
    raise ValueError(f"Unknown {kind} preset {name!r}; choose one of {sorted(presets)}.")
  config = presets[name]()
  for key, value in overrides.items():
    if key in RETIRED_FIELDS and key not in config:
      raise ValueError(f"{kind} field {key!r} moved out of the model config: pass remat_policy to hj.loss, or set "
                       "train.remat_policy in a training config (see the README's changelog).")
    if key not in config:
      raise ValueError(f"Unknown {kind} field {key!r} for preset {name!r}; known fields: {sorted(config.keys())}.")
    config[key] = value
  return config
