"""Training checkpoints: an Orbax CheckpointManager holding the train state, the grain iterator state, and a small
JSON record (configs, array shapes) that lets a resume refuse a checkpoint of another model shape clearly.

Saves are asynchronous (the arrays are copied off the devices before ``save`` returns, so the next step may
donate them), every ``every`` steps, keeping the last ``keep``; Orbax writes each step to a temporary directory
and renames it when complete, so a crash never leaves a half checkpoint that a resume would pick. A restore
targets abstract arrays carrying the current shardings, so a run resumes onto a different mesh.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import numpy as np

from huginn_jax import config as config_lib

STATE, DATA, META = "state", "data", "meta"


def _key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def flatten_state(tree) -> dict[str, Any]:
  """A flat ``{"params.core.adapter": array, ...}`` dict of a pytree (any nesting of dicts/tuples/namedtuples)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  flat = {".".join(_key_name(e) for e in path): leaf for path, leaf in leaves}
  if len(flat) != len(leaves):
    raise ValueError("two train-state leaves share a checkpoint name; the state pytree has ambiguous keys.")
  return flat


def unflatten_state(flat: dict[str, Any], like) -> Any:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  return jax.tree_util.tree_unflatten(treedef, [flat[".".join(_key_name(e) for e in p)] for p, _ in leaves])


def describe_shapes(flat: dict[str, Any]) -> dict[str, list]:
  return {k: [list(v.shape), str(np.dtype(v.dtype))] for k, v in flat.items()}


def is_complete_step(path: str) -> bool:
  """Whether a step directory holds a finished save (Orbax's metadata file and the state and meta items)."""
  return all(os.path.exists(os.path.join(path, name)) for name in ("_CHECKPOINT_METADATA", STATE, META))


def remove_leftovers(directory: str) -> list[str]:
  """Deletes what interrupted saves and deletions leave in a checkpoint directory: Orbax's ``*.orbax-checkpoint-tmp*``
  directories and step directories that are not complete (a rotation cut short). Returns the removed paths.

  Call it only while holding the workdir (no save can be under way)."""
  if not os.path.isdir(directory):
    return []
  removed = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if not os.path.isdir(path):
      continue
    if ".orbax-checkpoint-tmp" in name or (name.isdigit() and not is_complete_step(path)):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed


class TrainCheckpointer:
  """Saves and restores (train state, data iterator) pairs under ``directory``."""

  def __init__(self, directory: str | os.PathLike, *, every: int = 1, keep: int = 3, async_save: bool = True):
    import orbax.checkpoint as ocp
    self.directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=keep,
                                           enable_async_checkpointing=async_save, create=True)
    self._ocp = ocp
    self.manager = ocp.CheckpointManager(self.directory, item_names=(STATE, DATA, META), options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None, meta: dict | None = None, *, force: bool = False) -> bool:
    """Saves if ``step`` is on the interval (or ``force``); returns whether a save started."""
    import grain
    ocp = self._ocp
    flat = flatten_state(state)
    record = dict(meta or {})
    record["shapes"] = describe_shapes(flat)
    record["has_data_state"] = data_iterator is not None
    items = {STATE: ocp.args.StandardSave(flat), META: ocp.args.JsonSave(record)}
    if data_iterator is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)

  def read_meta(self, step: int) -> dict:
    ocp = self._ocp
    return self.manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]

  def restore(self, abstract_state, data_iterator=None, *, step: int | None = None,
              model_config: dict | None = None):
    """Restores the train state onto the shardings carried by ``abstract_state`` (ShapeDtypeStruct leaves) and,
    if given, the data iterator in place. Raises ``ValueError`` for a checkpoint of another model shape."""
    import grain
    ocp = self._ocp
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    meta = self.read_meta(step)
    target = flatten_state(abstract_state)
    self._check_compatible(step, meta, target, model_config)
    items = {STATE: ocp.args.StandardRestore(target)}
    if data_iterator is not None:
      if not meta.get("has_data_state", False):
        raise ValueError(f"checkpoint step {step} in {self.directory} has no data iterator state to resume from.")
      items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return unflatten_state(restored[STATE], abstract_state), meta

  def _check_compatible(self, step: int, meta: dict, target: dict, model_config: dict | None) -> None:
    where = f"checkpoint step {step} in {self.directory}"
    saved_model = meta.get("model_config")
    if model_config is not None and saved_model is not None:
      here = config_lib.shape_fields(model_config)
      diff = [f"{k}={v!r} there, {here[k]!r} here" for k, v in config_lib.shape_fields(saved_model).items()
              if v != here[k]]
      if diff:
        raise ValueError(f"{where} was saved for another model shape ({'; '.join(diff)}); use the model config it "
                         "was trained with, or start a fresh run in another workdir.")
    saved = meta.get("shapes", {})
    missing = sorted(set(target) - set(saved))
    extra = sorted(set(saved) - set(target))
    if missing or extra:
      raise ValueError(f"{where} does not hold this train state: missing {missing[:5]}, unexpected {extra[:5]} "
                       "(another optimizer or model?); start a fresh run in another workdir.")
    for name, leaf in target.items():
      shape, dtype = saved[name]
      if tuple(shape) != tuple(leaf.shape):
        raise ValueError(f"{where}: {name} has shape {tuple(shape)} there but {tuple(leaf.shape)} here; it was saved "
                         "for another model shape.")
      del dtype  # a dtype change (e.g. bf16 -> f32 params) is a legitimate cast on restore

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
