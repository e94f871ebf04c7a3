"""Gradient-flow logging for users' own training loops, as an optax transform."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradflow_jax import _stats


class MonitorState(NamedTuple):
  """The latest gradient measurements.

  Attributes:
    count: number of updates seen.
    grad_norms: a pytree shaped like the parameters, ||g|| of every leaf
      (for the built-in MLP, ``grad_norms["layers"][i]["w"]`` is ||dL/dW_i||).
    global_norm: sqrt of the sum of squares of every gradient (what
      ``clip_by_global_norm`` compares).
    nonfinite: True when any gradient entry is NaN/Inf.
  """
  count: jax.Array
  grad_norms: Any
  global_norm: jax.Array
  nonfinite: jax.Array


def gradient_flow_monitor() -> optax.GradientTransformation:
  """An identity gradient transformation that records gradient norms.

  Put it first in a chain to see the raw gradients (before clipping):
  ``optax.chain(gradient_flow_monitor(), optax.clip_by_global_norm(1.0),
  optax.adam(1e-3))``; read the numbers with :func:`find_monitor_state`.

  Example:
    >>> tx = optax.chain(gradient_flow_monitor(), optax.adam(1e-3))
    >>> state = tx.init({"w": jnp.ones(3)})
    >>> _, state = tx.update({"w": jnp.ones(3)}, state)
    >>> float(find_monitor_state(state).global_norm)  # doctest: +ELLIPSIS
    1.73...
  """
  def init(params):
    zeros = jax.tree.map(lambda p: jnp.zeros((), jnp.float32), params)
    return MonitorState(jnp.zeros((), jnp.int32), zeros, jnp.zeros((), jnp.float32),
                        jnp.zeros((), bool))

  def update(updates, state, params=None):
    del params
    norms = jax.tree.map(_stats.leaf_norm, updates)
    total = jnp.sqrt(sum(n * n for n in jax.tree.leaves(norms)))
    return updates, MonitorState(state.count + 1, norms, total, ~jnp.isfinite(total))

  return optax.GradientTransformation(init, update)


def find_monitor_state(opt_state) -> MonitorState:
  """The MonitorState inside an optimizer state (a chain's tuple, nested)."""
  if isinstance(opt_state, MonitorState):
    return opt_state
  if isinstance(opt_state, (tuple, list)):
    for s in opt_state:
      try:
        return find_monitor_state(s)
      except LookupError:
        pass
  raise LookupError("expected an optimizer state containing gradient_flow_monitor()'s state")
