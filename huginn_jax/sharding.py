"""Device mesh, logical-axis rules, and the shardings of params, optimizer state and activations.

Every parameter carries logical axis names (``hj.logical_axes(config)``: "vocab", "embed", "heads", "mlp", ...).
A rules table maps each logical name to mesh axes of the mesh ("data", "fsdp", "tensor"). A mesh axis that does
not divide the dimension it shards is an error naming both: nothing is silently replicated.

Activations carry logical names too ("act_batch", "act_seq", "act_embed", "act_heads", "act_mlp", "act_vocab"):
the model calls ``with_logical_constraint`` at each of them, which constrains the array when a mesh and rules are
active (``activation_sharding``, entered by the train step) and is the identity otherwise.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None

# Logical axis -> mesh axes. Params are sharded over fsdp on the model dimension and over tensor on heads, MLP
# hidden units and the vocabulary; activations are sharded over (data, fsdp) on the batch.
DEFAULT_RULES: dict[str, MeshAxes] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "qkv": None,
    "gate_up": None,
    "norm": None,
    "adapter_in": None,
    # activations
    "act_batch": ("data", "fsdp"),
    "act_seq": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor) of the given sizes; one size may be -1 (all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"Unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}.")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f"At most one mesh axis may be -1 (fill), got {dict(zip(MESH_AXES, sizes))}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"Mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"The mesh {_describe(sizes)} needs a multiple of {known} devices for its -1 axis, but "
                       f"{len(devices)} devices are available; change train.mesh.")
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    raise ValueError(f"The mesh {_describe(sizes)} needs {math.prod(sizes)} devices but {len(devices)} are "
                     f"available; change train.mesh so that data * fsdp * tensor = {len(devices)} "
                     "(use -1 for one axis to fill).")
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices == list(jax.devices()):
    return jax.make_mesh(sizes, MESH_AXES, axis_types=auto)
  return Mesh(np.asarray(devices, dtype=object).reshape(sizes), MESH_AXES, axis_types=auto)


def _describe(sizes) -> str:
  return " x ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))


def rules_table(overrides: Iterable[tuple[str, MeshAxes]] | Mapping[str, MeshAxes] = ()) -> dict[str, MeshAxes]:
  """The default rules with ``overrides`` applied (e.g. ``{"heads": None}`` when tensor does not divide heads)."""
  rules = dict(DEFAULT_RULES)
  items = overrides.items() if isinstance(overrides, Mapping) else overrides
  for logical, mesh_axes in items:
    if isinstance(mesh_axes, list):
      mesh_axes = tuple(mesh_axes)
    for axis in (mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"sharding rule {logical!r} -> {mesh_axes!r} names unknown mesh axis {axis!r}; mesh axes "
                         f"are {MESH_AXES}.")
    rules[logical] = mesh_axes
  return rules


def logical_to_spec(axes: Sequence[str | None], rules: Mapping[str, MeshAxes]) -> PartitionSpec:
  """PartitionSpec of an array with these logical axis names; each mesh axis is used at most once."""
  used: set[str] = set()
  spec = []
  for name in axes:
    if name is None:
      spec.append(None)
      continue
    if name not in rules:
      raise ValueError(f"No sharding rule for logical axis {name!r}; add one to train.sharding_rules "
                       f"(known: {sorted(rules)}).")
    mesh_axes = rules[name]
    group = mesh_axes if isinstance(mesh_axes, tuple) else ((mesh_axes,) if mesh_axes else ())
    clash = [a for a in group if a in used]
    if clash:
      raise ValueError(f"logical axes {tuple(axes)}: mesh axis {clash[0]!r} would shard two dimensions (via "
                       f"{name!r}); map one of them to another mesh axis in train.sharding_rules.")
    used.update(group)
    spec.append(group if len(group) > 1 else (group[0] if group else None))
  return PartitionSpec(*spec)


def _axis_size(mesh: Mesh, entry) -> int:
  if entry is None:
    return 1
  return math.prod(mesh.shape[a] for a in (entry if isinstance(entry, tuple) else (entry,)))


def check_divisible(name: str, shape: Sequence[int], spec: PartitionSpec, mesh: Mesh,
                    axes: Sequence[str | None] | None = None) -> None:
  """Raises if a mesh axis does not divide the dimension it shards (never replicate silently)."""
  for dim, (size, entry) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
    parts = _axis_size(mesh, entry)
    if size % parts:
      logical = f" (logical axis {axes[dim]!r})" if axes is not None else ""
      raise ValueError(
          f"{name}: dimension {dim}{logical} of size {size} is not divisible by mesh axis {entry!r} of size {parts}; "
          f"change train.mesh, or map {axes[dim] if axes is not None else 'that axis'!r} to another mesh axis "
          "(or None) in train.sharding_rules.")


def _path_name(path) -> str:
  return "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)


def param_specs(model_config, rules: Mapping[str, MeshAxes], mesh: Mesh | None = None) -> Any:
  """PartitionSpecs of every parameter (a pytree like the params); checks divisibility when a mesh is given."""
  from huginn_jax import api
  axes = api.logical_axes(model_config)
  shapes = api.abstract_params(model_config)
  is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)  # noqa: E731

  def one(path, logical, shape):
    spec = logical_to_spec(logical, rules)
    if mesh is not None:
      check_divisible(f"param {_path_name(path)}", shape.shape, spec, mesh, logical)
    return spec

  return jax.tree_util.tree_map_with_path(one, axes, shapes, is_leaf=is_axes)


def param_shardings(model_config, mesh: Mesh, rules: Mapping[str, MeshAxes]) -> Any:
  """NamedShardings of every parameter on ``mesh``."""
  specs = param_specs(model_config, rules, mesh)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def sharding_for(mesh: Mesh, rules: Mapping[str, MeshAxes], logical: Sequence[str | None],
                 shape: Sequence[int] | None = None, name: str = "array") -> NamedSharding:
  """NamedSharding of an array with these logical axes; checks divisibility when the shape is given."""
  spec = logical_to_spec(logical, rules)
  if shape is not None:
    check_divisible(name, shape, spec, mesh, logical)
  return NamedSharding(mesh, spec)


def constrain(x: jax.Array, logical: Sequence[str | None], mesh: Mesh | None, rules: Mapping[str, MeshAxes],
              name: str = "activation") -> jax.Array:
  """``with_sharding_constraint`` by logical axis names (identity without a mesh)."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, sharding_for(mesh, rules, logical, x.shape, name))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


_ACTIVE: contextvars.ContextVar[tuple[Mesh, Mapping[str, MeshAxes]] | None] = contextvars.ContextVar(
    "huginn_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules: Mapping[str, MeshAxes]):
  """Within this block, code traced by the model constrains its activations on ``mesh`` by ``rules`` (no-op for
  ``mesh=None``). Enter it inside the function being traced, as the train step does: JAX's trace caches do not
  see it, so a function traced once outside the block keeps its unconstrained trace."""
  token = _ACTIVE.set(None if mesh is None else (mesh, rules))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def active_rules() -> Mapping[str, MeshAxes]:
  """The rules of the enclosing ``activation_sharding`` block, else the defaults."""
  active = _ACTIVE.get()
  return DEFAULT_RULES if active is None else active[1]


def with_logical_constraint(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """``constrain`` by the mesh and rules of the enclosing ``activation_sharding`` block (identity outside one)."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  return constrain(x, logical, mesh, rules, name=f"activation {tuple(logical)}")


_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def _world_size_from_env() -> int:
  for var in ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "WORLD_SIZE"):
    if os.environ.get(var, "").isdigit():
      return int(os.environ[var])
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len(hosts.split(",")) if hosts else 1


def maybe_initialize_distributed(mode: str | bool = "auto") -> bool:
  """Calls ``jax.distributed.initialize()`` when running on several hosts (auto-detected from the environment:
  a coordinator address, SLURM, Open MPI or a TPU pod), or always with ``mode=True``. Returns whether it did."""
  if mode is False or mode == "off":
    return False
  if mode == "auto" and not (any(os.environ.get(v) for v in _MULTIHOST_ENV) or _world_size_from_env() > 1):
    return False
  if jax.distributed.is_initialized():
    return True
  jax.distributed.initialize(**_explicit_processes())
  return True


def _explicit_processes() -> dict:
  """``jax.distributed.initialize`` arguments from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
  (all three, or none: then JAX discovers the cluster itself, as on a Cloud TPU pod, SLURM or Open MPI)."""
  names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  values = {name: os.environ.get(name, "") for name in names}
  if not any(values.values()):
    return {}
  missing = [name for name, value in values.items() if not value]
  if missing:
    raise ValueError(f"{', '.join(n for n in names if n not in missing)} set but not {', '.join(missing)}: set all "
                     "three (host:port of process 0, the number of processes, this process's index) or none.")
  for name in names[1:]:
    if not values[name].isdigit():
      raise ValueError(f"{name} must be a non-negative integer, got {values[name]!r}.")
  return dict(coordinator_address=values["JAX_COORDINATOR_ADDRESS"], num_processes=int(values["JAX_NUM_PROCESSES"]),
              process_id=int(values["JAX_PROCESS_ID"]))
