"""Declarative mapping between the original's HF/PyTorch state dict and our params.

Each ``Rule`` names one HF tensor, the path of our param, and a pair of layout transforms that invert each other
(torch Linear weights are [out, in]; ours are [in, out] with heads and fused parts split into their own axes).
``load_hf`` streams tensors one at a time from safetensors (single or sharded) or a PyTorch file; ``export_hf``
streams them back.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Callable, Iterator

import numpy as np

from huginn_jax import config as config_lib
from huginn_jax.checkpoint.safetensors_io import SafetensorsFile

KEY_PREFIXES = ("_orig_mod._original_module.", "_orig_mod.", "module.")
IGNORED_KEYS = ("freqs_cis", "lm_head.weight")  # a recomputed buffer, and the head tied to transformer.wte.weight


@dataclasses.dataclass(frozen=True)
class Rule:
  hf_name: str
  path: tuple[Any, ...]  # keys into our params dict
  hf_shape: tuple[int, ...]
  to_jax: Callable[[np.ndarray], np.ndarray]
  to_torch: Callable[[np.ndarray], np.ndarray]


def _linear(hf_name, path, d_in_shape: tuple[int, ...], d_out_shape: tuple[int, ...]) -> Rule:
  """A torch Linear [out, in] <-> ours with shape (*d_in_shape, *d_out_shape)."""
  n_in, n_out = int(np.prod(d_in_shape)), int(np.prod(d_out_shape))
  ours = (*d_in_shape, *d_out_shape)
  return Rule(hf_name, path, (n_out, n_in),
              to_jax=lambda w: np.ascontiguousarray(w.T).reshape(ours),
              to_torch=lambda w: np.ascontiguousarray(w.reshape(n_in, n_out).T))


def _reshape(hf_name, path, hf_shape, ours) -> Rule:
  return Rule(hf_name, path, tuple(hf_shape), to_jax=lambda w: w.reshape(ours), to_torch=lambda w: w.reshape(hf_shape))


def _block_rules(prefix: str, path: tuple, config) -> list[Rule]:
  d, h, hd, i = config.d_model, config.n_heads, config.head_dim, config.intermediate_size
  rules = [_reshape(f"{prefix}.norm_{j}.weight", (*path, f"norm_{j}", "scale"), (d,), (d,)) for j in (1, 2, 3, 4)]
  rules += [
      _linear(f"{prefix}.attn.Wqkv.weight", (*path, "attn", "wqkv"), (d,), (3, h, hd)),
      _linear(f"{prefix}.attn.proj.weight", (*path, "attn", "proj"), (h, hd), (d,)),
      _linear(f"{prefix}.mlp.fc.weight", (*path, "mlp", "fc"), (d,), (2, i)),
      _linear(f"{prefix}.mlp.proj.weight", (*path, "mlp", "proj"), (i,), (d,)),
  ]
  if config.qk_bias:
    rules.append(_reshape(f"{prefix}.attn.qk_bias", (*path, "attn", "qk_bias"), (2, 1, h, hd), (2, h, hd)))
  return rules


def rules(config) -> list[Rule]:
  """Every tensor of the HF checkpoint for ``config``, in the original's state-dict order."""
  d = config.d_model
  out = [_reshape("transformer.wte.weight", ("wte",), (config.vocab_size, d), (config.vocab_size, d))]
  for j in range(config.n_layers_prelude):
    out += _block_rules(f"transformer.prelude.{j}", ("prelude", j), config)
  out.append(_linear("transformer.adapter.weight", ("core", "adapter"), (2 * d,), (d,)))
  for j in range(config.n_layers_core):
    out += _block_rules(f"transformer.core_block.{j}", ("core", "layers", j), config)
  for j in range(config.n_layers_coda):
    out += _block_rules(f"transformer.coda.{j}", ("coda", j), config)
  out.append(_reshape("transformer.ln_f.weight", ("ln_f", "scale"), (d,), (d,)))
  return out


def freqs_cis(config) -> np.ndarray:
  """The original's RoPE buffer [1, max_seq_len, 1, head_dim/2, 2] (cos, sin) in float32."""
  hd = config.head_dim
  inv_freq = (1.0 / (np.float32(config.rope_base) ** (np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd))))
  angles = np.outer(np.arange(config.max_seq_len, dtype=np.float32), inv_freq.astype(np.float32))
  return np.stack([np.cos(angles), np.sin(angles)], axis=-1)[None, :, None].astype(np.float32)


def strip_prefix(key: str) -> str:
  for prefix in KEY_PREFIXES:
    if key.startswith(prefix):
      return key[len(prefix):]
  return key


# --- reading ------------------------------------------------------------------------------------------------------

class TensorSource:
  """Name -> lazily loaded numpy tensor over one or more files of a checkpoint directory or file."""

  def __init__(self, getters: dict[str, Callable[[], np.ndarray]], shapes: dict[str, tuple[int, ...]], origin: str):
    self._getters, self._shapes, self.origin = getters, shapes, origin

  def keys(self) -> list[str]:
    return list(self._getters)

  def shape(self, key: str) -> tuple[int, ...]:
    return self._shapes[key]

  def get(self, key: str) -> np.ndarray:
    return self._getters[key]()


def _safetensors_files(path: str) -> list[str]:
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
    if missing:
      raise FileNotFoundError(f"{index} names shard files that are missing: {missing}.")
    return [os.path.join(path, f) for f in files]
  return sorted(glob.glob(os.path.join(path, "*.safetensors")))


def open_tensors(path: str | os.PathLike) -> TensorSource:
  """Opens the tensors of an HF directory (safetensors, sharded or not, or pytorch_model.bin) or a single file."""
  path = os.fspath(path)
  files = _safetensors_files(path) if os.path.isdir(path) else [path]
  if os.path.isdir(path) and not files:
    files = sorted(glob.glob(os.path.join(path, "*.pth")) + glob.glob(os.path.join(path, "*.bin")))
  if not files:
    raise FileNotFoundError(f"No *.safetensors, *.bin or *.pth checkpoint found in {path}.")
  getters, shapes = {}, {}
  for file in files:
    if file.endswith(".safetensors"):
      st = SafetensorsFile(file)
      for key in st.keys():
        getters[strip_prefix(key)] = (lambda st=st, key=key: st.get(key))
        shapes[strip_prefix(key)] = st.shape(key)
    else:
      state = _load_torch(file)
      for key, value in state.items():
        getters[strip_prefix(key)] = (lambda value=value: _torch_to_numpy(value))
        shapes[strip_prefix(key)] = tuple(value.shape)
  return TensorSource(getters, shapes, path)


def _load_torch(file: str) -> dict:
  try:
    import torch
  except ImportError as err:
    raise ImportError(f"Reading {file} needs PyTorch: pip install 'huginn-jax[torch]' (safetensors needs no torch)."
                      ) from err
  state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
  if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
    state = state["model"]
  return state


def _torch_to_numpy(t) -> np.ndarray:
  import ml_dtypes
  import torch
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def hf_config_path(path: str | os.PathLike) -> str:
  """The ``config.json`` of an HF checkpoint directory (or next to a .pth/.bin file); it must exist."""
  file = os.path.join(path, "config.json") if os.path.isdir(path) else os.path.join(os.path.dirname(path),
                                                                                      "config.json")
  if not os.path.exists(file):
    raise FileNotFoundError(f"No config.json next to the checkpoint at {path}; the HF directory needs one.")
  return file


def read_hf_config(path: str | os.PathLike) -> dict:
  with open(hf_config_path(path)) as f:
    return json.load(f)


def check_keys(source: TensorSource, config) -> list[Rule]:
  """Checks that the checkpoint has exactly the expected tensors with the expected shapes; returns the rules."""
  table = rules(config)
  expected = {r.hf_name for r in table}
  present = set(source.keys())
  missing = sorted(expected - present)
  if missing:
    raise KeyError(f"checkpoint {source.origin} lacks tensor {missing[0]!r}"
                   + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                   + "; is it a complete Huginn checkpoint matching its config.json?")
  unexpected = sorted(present - expected - set(IGNORED_KEYS))
  if unexpected:
    raise KeyError(f"checkpoint {source.origin} has unexpected tensor {unexpected[0]!r}"
                   + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
                   + "; its config.json may not describe it.")
  for r in table:
    if source.shape(r.hf_name) != r.hf_shape:
      raise ValueError(f"tensor {r.hf_name!r} has shape {source.shape(r.hf_name)}, expected {r.hf_shape} for this "
                       "config; the checkpoint and config.json disagree.")
  return table


def iter_params(source: TensorSource, config, dtype=None) -> Iterator[tuple[Rule, np.ndarray]]:
  """Yields (rule, array in our layout) one tensor at a time."""
  for r in check_keys(source, config):
    w = r.to_jax(source.get(r.hf_name))
    yield r, (w.astype(dtype, copy=False) if dtype is not None else w)


def iter_hf_tensors(params, config) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (hf name, numpy array in torch layout) for every tensor, then ``freqs_cis``."""
  for r in rules(config):
    node = params
    for k in r.path:
      node = node[k]
    yield r.hf_name, r.to_torch(np.asarray(node))
  yield "freqs_cis", freqs_cis(config)


def set_path(tree: dict, path: tuple, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value



def config_from_checkpoint(path) -> Any:
  return config_lib.from_hf_config(hf_config_path(path))  # errors name the file
