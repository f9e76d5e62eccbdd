"""Walking a jaxpr and the jaxprs nested in it, to check where casts happen (inside loops or not)."""

import jax
import jax.extend
import jax.numpy as jnp

LOOPS = ("scan", "while")


def eqns(jaxpr, in_loop: bool = False):
  """(equation, inside a loop body?) of a jaxpr and of every jaxpr nested in it."""
  for eqn, loop, _ in _walk(jaxpr, in_loop):
    yield eqn, loop


def _walk(jaxpr, in_loop: bool = False):
  """(equation, inside a loop body?, the primitive that produced each of its own jaxpr's values so far)."""
  produced_by = {}
  for eqn in jaxpr.eqns:
    yield eqn, in_loop, produced_by
    for var in eqn.outvars:
      produced_by[var] = eqn.primitive.name
    loop = in_loop or eqn.primitive.name in LOOPS
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _walk(sub.jaxpr, loop)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _walk(sub, loop)


def casts_in_loops(jaxpr, shapes, dtype=jnp.bfloat16) -> list:
  """Casts to ``dtype`` of arrays shaped like one of ``shapes`` (e.g. the weights) inside loop bodies; a matmul's
  result rounded to ``dtype`` (a weight-shaped gradient) is not a weight cast."""
  return [eqn for eqn, in_loop, produced_by in _walk(jaxpr) if in_loop
          and eqn.primitive.name == "convert_element_type" and eqn.outvars[0].aval.dtype == dtype
          and tuple(eqn.invars[0].aval.shape) in shapes and produced_by.get(eqn.invars[0]) != "dot_general"]
