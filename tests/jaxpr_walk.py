"""Walking a jaxpr and the jaxprs nested in it, to check where casts happen (inside loops or not)."""

import jax
import jax.numpy as jnp

LOOPS = ("scan", "while")


def eqns(jaxpr, in_loop: bool = False):
  """(equation, inside a loop body?) of a jaxpr and of every jaxpr nested in it."""
  for eqn in jaxpr.eqns:
    yield eqn, in_loop
    loop = in_loop or eqn.primitive.name in LOOPS
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from eqns(sub.jaxpr, loop)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from eqns(sub, loop)


def casts_in_loops(jaxpr, shapes, dtype=jnp.bfloat16) -> list:
  """Casts to ``dtype`` of arrays shaped like one of ``shapes`` (e.g. the weights) inside loop bodies."""
  return [eqn for eqn, in_loop in eqns(jaxpr) if in_loop and eqn.primitive.name == "convert_element_type"
          and eqn.outvars[0].aval.dtype == dtype and tuple(eqn.invars[0].aval.shape) in shapes]
