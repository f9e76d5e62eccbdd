"""Loading and saving params: HF directories (read), Orbax directories (read/write), HF export (write).

Every writer builds its output in a temporary sibling directory and renames it into place when complete, so an
interrupted write never leaves a half-written checkpoint under the target name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from huginn_jax import config as config_lib
from huginn_jax.checkpoint import hf
from huginn_jax.checkpoint import safetensors_io
from huginn_jax.progress import progress

CONFIG_FILE = "huginn_config.json"  # our ConfigDict, in an Orbax checkpoint directory
PARAMS_DIR = "params"


def tensor_progress(iterable, total: int, desc: str, enabled: bool = True):
  """Progress over the tensors of a checkpoint (a bar on a terminal, a line now and then in a log file)."""
  return progress(iterable, total=total, desc=desc, unit="tensor", enabled=enabled, leave=False)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary directory that replaces ``path`` only if the block finishes without error."""
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} already exists; remove it or pass overwrite=True.")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    if os.path.exists(path):
      old = f"{path}.old-{os.getpid()}"
      os.replace(path, old)
      os.replace(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def is_orbax_dir(path) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, CONFIG_FILE))


def is_train_step_dir(path) -> bool:
  """A step of a training run: ``<workdir>/checkpoints/<step>`` (train state, data state, meta)."""
  return os.path.isdir(os.path.join(path, "state")) and os.path.isfile(os.path.join(path, "meta", "metadata"))


def resolve_checkpoint(path: str) -> str:
  """``path`` itself, or for a training workdir or its ``checkpoints`` directory, the latest complete step in it."""
  path = os.fspath(path)
  for directory in (os.path.join(path, "checkpoints"), path):
    if is_orbax_dir(path) or is_train_step_dir(path) or not os.path.isdir(directory):
      continue
    steps = sorted((int(n) for n in os.listdir(directory) if n.isdigit()
                    and is_train_step_dir(os.path.join(directory, n))), reverse=True)
    if steps:
      return os.path.join(directory, str(steps[0]))
  return path


def _train_meta(path: str) -> dict:
  with open(os.path.join(path, "meta", "metadata")) as f:
    return json.load(f)


def read_config(path) -> ml_collections.ConfigDict:
  """The model config of any checkpoint ``load`` reads (HF, ours, a training run's), without the weights."""
  path = resolve_checkpoint(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"No checkpoint at {path}.")
  if is_orbax_dir(path):
    return config_from_json(os.path.join(path, CONFIG_FILE))
  if is_train_step_dir(path):
    return config_from_dict(_train_meta(path).get("model_config"), os.path.join(path, "meta", "metadata"))
  return hf.config_from_checkpoint(path)


def _config_to_json(config) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


# Fields a saved config may omit, and the value it then gets (the documented defaults of config._base); every other
# field changes the network or its outputs and must be in the file.
OPTIONAL_FIELDS = ("name", "param_dtype", "compute_dtype", "attention_impl", "mean_backprop_depth")


def config_from_dict(fields, source: str) -> ml_collections.ConfigDict:
  """A validated model config from the fields of a saved config; ``source`` names the file in errors."""
  if not isinstance(fields, dict):
    raise ValueError(f"{source} must hold a JSON object of model config fields, got a {type(fields).__name__}.")
  config = config_lib.base_config()
  fields = {k: v for k, v in fields.items() if k not in config_lib.RETIRED_FIELDS}  # written by older versions
  unknown = set(fields) - set(config.keys())
  if unknown:
    raise ValueError(f"{source} has unknown config fields {sorted(unknown)}; was it written by a newer huginn-jax?")
  missing = sorted(set(config.keys()) - set(fields) - set(OPTIONAL_FIELDS))
  if missing:
    raise ValueError(f"{source} lacks the model config fields {missing}; add them to the file (hj.get_config(...)."
                     "to_dict() lists every field).")
  for key, value in fields.items():
    expected = type(config[key])
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
      raise ValueError(f"{source}: field {key!r} must be a {expected.__name__}, got {value!r}.")
    config[key] = value
  try:
    return config_lib.validate(config)
  except ValueError as err:
    raise ValueError(f"{source}: {err}") from None


def config_from_json(path: str) -> ml_collections.ConfigDict:
  """The model config saved as JSON at ``path`` (``huginn_config.json``); errors name the file and the field."""
  try:
    with open(path) as f:
      fields = json.load(f)
  except json.JSONDecodeError as err:
    raise ValueError(f"{path} is not valid JSON ({err}); restore it from the checkpoint it came with.") from None
  return config_from_dict(fields, path)


def floating_dtype(dtype) -> str:
  """The name of ``dtype`` if params may be held in it (float32, bfloat16, float16), else a ``ValueError``."""
  try:
    name = jnp.dtype(dtype).name
  except TypeError:
    name = None
  if name not in config_lib.DTYPES:
    raise ValueError(f"dtype {str(dtype)!r} is not supported for params; choose one of {config_lib.DTYPES} "
                     "(integer and float64 weights are not a Huginn model).")
  return name


def _dtype_override(config, dtype):
  """Params in ``dtype``; activations follow (bf16 weights compute in bf16, as the original does under autocast)."""
  if dtype is not None:
    config.param_dtype = config.compute_dtype = floating_dtype(dtype)
  return config


def open_hf(path, dtype=None):
  """(tensor source, config) of an HF checkpoint; params in ``dtype``, default the checkpoint's own dtype."""
  source = hf.open_tensors(path)
  config = hf.config_from_checkpoint(path)
  first = hf.rules(config)[0].hf_name
  if first not in source.keys():
    hf.check_keys(source, config)  # raises, naming the missing tensor
  return source, _dtype_override(config, dtype if dtype is not None else source.get(first).dtype)


def _put(array: np.ndarray, sharding) -> jax.Array:
  return jax.device_put(array, sharding) if sharding is not None else jnp.asarray(array)


def load_hf(path, dtype=None, shardings=None, show_progress: bool = True):
  """Reads an HF checkpoint directory into (config, params), one tensor at a time.

  ``dtype`` casts the params (default: the checkpoint's own dtype). ``shardings`` (a pytree like the params of
  ``jax.sharding.Sharding``) places each tensor straight onto its devices, with no full copy in host memory.
  """
  source, config = open_hf(path, dtype)
  params: dict[str, Any] = {}
  for r, w in tensor_progress(hf.iter_params(source, config, np.dtype(jnp.dtype(config.param_dtype))),
                              len(hf.rules(config)), "loading", show_progress):
    target = _at(shardings, r.path)
    hf.set_path(params, r.path, _put(w, target))
  return config, params


def _at(tree, path):
  if tree is None:
    return None
  for k in path:
    tree = tree[k]
  return tree


def save(path: str | os.PathLike, config: ml_collections.ConfigDict, params: dict[str, Any], *,
         overwrite: bool = False) -> str:
  """Writes (config, params) as an Orbax checkpoint directory, atomically. Returns the path."""
  import orbax.checkpoint as ocp
  with atomic_dir(path, overwrite) as tmp:
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
      f.write(_config_to_json(config))
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, PARAMS_DIR), _str_keys(params))
      ckptr.wait_until_finished()
  return os.path.abspath(path)


def _str_keys(tree):
  if isinstance(tree, dict):
    return {str(k): _str_keys(v) for k, v in tree.items()}
  return tree


def _int_keys(tree, like):
  if isinstance(like, dict):
    return {k: _int_keys(tree[str(k)], v) for k, v in like.items()}
  return tree


def load_orbax(path, dtype=None, shardings=None):
  """Reads an Orbax directory written by ``save`` (or ``huginn-jax convert``) into (config, params)."""
  import orbax.checkpoint as ocp
  from huginn_jax import api
  config = _dtype_override(config_from_json(os.path.join(path, CONFIG_FILE)), dtype)
  abstract = _restore_target(api.abstract_params(config), shardings)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(os.path.abspath(path), PARAMS_DIR), _str_keys(abstract))
  return config, _int_keys(restored, abstract)


def _restore_target(abstract, shardings):
  if shardings is not None:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), abstract)


def load_train_step(path, dtype=None, shardings=None):
  """The params of a training run's checkpoint step (``<workdir>/checkpoints/<step>``), without the optimizer."""
  import orbax.checkpoint as ocp
  from huginn_jax import api
  from huginn_jax.checkpoint.manager import flatten_state, unflatten_state
  path = os.path.abspath(os.fspath(path))
  config = read_config(path)
  if dtype is None:  # the dtype the run trained in (its master weights)
    dtype = config.param_dtype
  config = _dtype_override(config, dtype)
  like = {"params": _restore_target(api.abstract_params(config), shardings)}
  target = flatten_state(like)
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with ocp.PyTreeCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(path, "state"), args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  return config, unflatten_state(restored, like)["params"]


def load(path: str | os.PathLike, dtype: Any = None,
         shardings: Any = None) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """``hj.load``: an HF directory (config.json + safetensors or a .pth/.bin), an Orbax directory of ours, or a
  training run's checkpoint (``<workdir>/checkpoints/<step>``, or the workdir itself for its latest step)."""
  path = resolve_checkpoint(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"No checkpoint at {path}.")
  if is_orbax_dir(path):
    return load_orbax(path, dtype, shardings)
  if is_train_step_dir(path):
    return load_train_step(path, dtype, shardings)
  return load_hf(path, dtype, shardings)


def export_hf(path: str | os.PathLike, config: ml_collections.ConfigDict, params: dict[str, Any], *,
              dtype: Any = None, max_shard_bytes: int = 5 << 30, overwrite: bool = False,
              show_progress: bool = True) -> str:
  """Writes params as an HF directory the original PyTorch code loads: config.json + safetensors (sharded with an
  index above ``max_shard_bytes``), in the original's names and torch layout, streamed one tensor at a time."""
  out_dtype = np.dtype(jnp.dtype(floating_dtype(dtype if dtype is not None else config.param_dtype)))
  table = hf.rules(config)
  shapes = {r.hf_name: (r.hf_shape, out_dtype) for r in table}
  shapes["freqs_cis"] = (hf.freqs_cis(config).shape, np.dtype(np.float32))
  shards, current, size = [], {}, 0
  for name, (shape, dt) in shapes.items():
    nbytes = int(np.prod(shape)) * dt.itemsize
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = (shape, dt)
    size += nbytes
  shards.append(current)
  names = ([f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
           if len(shards) > 1 else ["model.safetensors"])
  tensors = ((n, w if n == "freqs_cis" else w.astype(out_dtype)) for n, w in hf.iter_hf_tensors(params, config))
  tensors = iter(tensor_progress(tensors, len(shapes), "exporting", show_progress))
  with atomic_dir(path, overwrite) as tmp:
    hf_config = config_lib.to_hf_config(config)
    hf_config["torch_dtype"] = out_dtype.name
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    weight_map = {}
    for shard, name in zip(shards, names):
      chunk = (next(tensors) for _ in range(len(shard)))
      safetensors_io.write(os.path.join(tmp, name), chunk, shapes=shard, metadata={"format": "pt"})
      weight_map.update({k: name for k in shard})
    if len(shards) > 1:
      total = sum(int(np.prod(s)) * d.itemsize for s, d in shapes.values())
      with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return os.path.abspath(path)
