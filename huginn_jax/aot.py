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
