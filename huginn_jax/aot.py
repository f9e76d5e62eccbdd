"""Ahead-of-time memory check: compile a step function for abstract, sharded inputs and report what one device holds.

Lowering and compiling need no device memory, so on simulated CPU devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=N``) a user can see whether a mesh fits before paying for the TPU slice.
Inputs are pytrees of ``jax.ShapeDtypeStruct`` whose ``sharding`` gives their layout; each named group (params,
optimizer state, batch, ...) is reported at its per-device size, next to the compiler's own figures: arguments,
outputs, temporaries (activations and everything else live inside the step), and the peak.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np

GIB = 1024**3


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a pytree of arrays / ShapeDtypeStructs: the largest shard of each leaf (replicated
  leaves count in full)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = tuple(leaf.shape)
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None:
      shape = sharding.shard_shape(shape)
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


@dataclasses.dataclass(frozen=True)
class MemoryReport:
  """Per-device memory of one compiled step, in bytes."""

  inputs: dict[str, int]  # per named input group
  arguments: int  # all inputs, as the compiler placed them
  outputs: int
  aliased: int  # outputs written in place of donated inputs (counted once)
  temporaries: int  # activations, gradients in flight, collectives' buffers
  generated_code: int
  peak: int  # the compiler's peak estimate (0 where the backend does not report one)

  @property
  def total(self) -> int:
    """Arguments + outputs + temporaries + code, with donated buffers counted once."""
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.generated_code

  def __str__(self) -> str:
    rows = [(f"input: {name}", size) for name, size in self.inputs.items()]
    rows += [("arguments (all inputs)", self.arguments), ("outputs", self.outputs),
             ("aliased (donated, counted once)", -self.aliased),
             ("temporaries (activations etc.)", self.temporaries), ("generated code", self.generated_code),
             ("total", self.total)]
    if self.peak:
      rows.append(("peak (compiler estimate)", self.peak))
    width = max(len(name) for name, _ in rows)
    lines = ["per-device memory of the compiled step:"]
    lines += [f"  {name:<{width}}  {size / GIB:10.3f} GiB" for name, size in rows]
    return "\n".join(lines)


def memory_analysis(fn: Callable, *args: Any, names: Sequence[str] | None = None, donate_argnums=(),
                    out_shardings=None, static_argnums=()) -> MemoryReport:
  """Lowers and compiles ``jax.jit(fn)`` for ``args`` (pytrees of ``jax.ShapeDtypeStruct``, shardings on the
  leaves) and returns the per-device memory. ``names`` labels the positional inputs (default arg0, arg1, ...)."""
  names = list(names) if names is not None else [f"arg{i}" for i in range(len(args))]
  if len(names) != len(args):
    raise ValueError(f"names has {len(names)} entries for {len(args)} inputs; give one name per positional input.")
  kwargs = {} if out_shardings is None else {"out_shardings": out_shardings}
  jitted = jax.jit(fn, donate_argnums=donate_argnums, static_argnums=static_argnums, **kwargs)
  compiled = jitted.lower(*args).compile()
  stats = compiled.memory_analysis()
  if stats is None:
    raise RuntimeError(f"the {jax.default_backend()!r} backend reports no memory analysis for compiled programs; "
                       "run the check on CPU (simulated devices) or TPU.")
  inputs = {name: per_device_bytes(arg) for name, arg in zip(names, args)
            if not isinstance(arg, (int, float, str, bool))}
  return MemoryReport(inputs=inputs, arguments=stats.argument_size_in_bytes, outputs=stats.output_size_in_bytes,
                      aliased=stats.alias_size_in_bytes, temporaries=stats.temp_size_in_bytes,
                      generated_code=stats.generated_code_size_in_bytes,
                      peak=int(getattr(stats, "peak_memory_in_bytes", 0) or 0))


# --- compiling for a TPU slice from a host without one ---------------------------------------------------------

_TPU_GENERATIONS = {  # accelerator-type prefix: (topology prefix, chip config, cores per chip counted in the type)
    "v4": ("v4", "megacore", 2),
    "v5p": ("v5", "megacore", 2),
    "v5litepod": ("v5e", "default", 1),
    "v6e": ("v6e", "default", 1),
}
_TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
             512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_TORUS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


def tpu_topology(accelerator_type: str) -> dict[str, Any]:
  """``jax.experimental.topologies.get_topology_desc`` arguments for a Cloud TPU accelerator type (v4-32,
  v5litepod-64, v5p-128, v6e-256, ...), with the usual slice shape for its chip count."""
  prefix, _, count = accelerator_type.rpartition("-")
  if prefix not in _TPU_GENERATIONS or not count.isdigit():
    raise ValueError(f"Unknown TPU accelerator type {accelerator_type!r}; use v4-N, v5litepod-N, v5p-N or v6e-N.")
  name, chip_config, cores_per_chip = _TPU_GENERATIONS[prefix]
  chips = int(count) // cores_per_chip
  shapes = _TORUS_3D if cores_per_chip == 2 else _TORUS_2D
  if chips not in shapes:
    raise ValueError(f"No slice shape known for {accelerator_type!r} ({chips} chips); known chip counts: "
                     f"{sorted(shapes)}.")
  host_bounds = (2, 4, 1) if shapes is _TORUS_2D and chips == 8 else (2, 2, 1)
  if chips < 4:
    host_bounds = (1, 1, 1)
  return {"topology_name": f"{name}:{shapes[chips]}", "chip_config_name": chip_config,
          "chips_per_host_bounds": host_bounds, "num_slices": 1}


def tpu_mesh(accelerator_type: str, mesh_shape: Sequence[int], axis_names: Sequence[str]) -> jax.sharding.Mesh:
  """A mesh of compile-only devices of a TPU slice: programs lowered under it compile with the TPU compiler (and
  the Pallas TPU kernels with Mosaic) on a CPU host, so ``memory_analysis`` reports the TPU's own figures.
  Needs the libtpu that matches jax (``pip install 'jax[tpu]'`` pulls it in) but no TPU."""
  from jax.experimental import topologies

  try:
    import libtpu  # noqa: F401
  except ImportError as err:
    raise RuntimeError("compiling for a TPU slice needs libtpu: pip install 'jax[tpu]' (it pins the libtpu "
                       "version that matches jax); no TPU is needed.") from err
  devices = topologies.get_topology_desc(platform="tpu", **tpu_topology(accelerator_type)).devices
  if math.prod(mesh_shape) != len(devices):
    raise ValueError(f"mesh shape {tuple(mesh_shape)} has {math.prod(mesh_shape)} devices but {accelerator_type} has "
                     f"{len(devices)}; make the axis sizes multiply to {len(devices)}.")
  return jax.sharding.Mesh(np.array(devices).reshape(tuple(mesh_shape)), tuple(axis_names))
