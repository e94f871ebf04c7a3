"""Gradient norms: per array (grouped into few reductions), per leaf, and
the global norm from per-leaf norms; accumulated in at least float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradflow_jax.measure import _backend
from gradflow_jax.measure._rows import _acc, _group_rows, _per_row, _stack, Row


def grouped_norms(arrays: list, families: list) -> jax.Array:
  """(n,) ||a|| of each array, accumulated in at least float32. Small arrays
  of one shape and dtype are reduced together, and the layers of one family
  (a scanned tap, see :class:`Row`) in order (see ``_group_rows``). The
  square is ``_backend.squared``."""
  if not arrays:
    return jnp.zeros((0,), jnp.float32)
  index = _group_rows([Row(a, a, family=f) for a, f in zip(arrays, families)])
  out = [None] * len(arrays)
  for members in index:
    stack = _acc(_stack([arrays[k] for k in members]))
    norms = jnp.sqrt(_per_row(jnp.sum, _backend.squared(stack)))
    for pos, k in enumerate(members):
      out[k] = norms[pos]
  return jnp.stack(out)


def leaf_norm(x):
  """||x|| of one array, accumulated in at least float32."""
  x = _acc(x)
  return jnp.sqrt(jnp.sum(x * x))


_norm = leaf_norm


def norm_of_norms(leaf_norms):
  """The global norm (``optax.tree.norm`` of the gradients) from per-leaf
  norms, without a second pass over the gradients."""
  leaves = jax.tree.leaves(leaf_norms)
  return jnp.sqrt(sum(jnp.square(n) for n in leaves)) if leaves else jnp.zeros(())
