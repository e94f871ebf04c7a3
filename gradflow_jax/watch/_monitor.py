"""Gradient-flow logging inside an optax chain, built on ``optax.monitor``,
and the guard that stops a run at its first non-finite gradient."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradflow_jax.measure import _norms

PREFIX = "gradflow/"


class MonitorReading(NamedTuple):
  """The latest gradient measurements of :func:`gradient_flow_monitor`.

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


def _counter() -> optax.GradientTransformation:
  """A stateful measure: the number of updates seen."""
  init = lambda params: jnp.zeros((), jnp.int32)
  return optax.GradientTransformation(init, lambda updates, count, params=None: (count + 1,
                                                                              count + 1))


def gradient_flow_monitor() -> optax.GradientTransformation:
  """``optax.monitor`` of the gradients where it stands in a chain (first:
  the raw gradients, before clipping): ``gradflow/grad_norms`` (per leaf),
  ``gradflow/global_norm``, ``gradflow/nonfinite`` and ``gradflow/count``,
  read with ``optax.tree.get(opt_state, "gradflow/global_norm")`` or all at
  once with :func:`find_monitor_state`.

  Example:
    >>> tx = optax.chain(gradient_flow_monitor(), optax.adam(1e-3))
    >>> state = tx.init({"w": jnp.ones(3)})
    >>> _, state = tx.update({"w": jnp.ones(3)}, state)
    >>> float(optax.tree.get(state, "gradflow/global_norm"))  # doctest: +ELLIPSIS
    1.73...
  """
  norms = lambda u: jax.tree.map(_norms.leaf_norm, u)
  total = lambda u: _norms.norm_of_norms(norms(u))
  monitor = optax.monitor({
      PREFIX + "grad_norms": norms,
      PREFIX + "global_norm": total,
      PREFIX + "nonfinite": lambda u: ~jnp.isfinite(total(u)),
      PREFIX + "count": _counter(),
  })

  def init(params):
    # optax.monitor starts with no measurements; zeros keep the state's
    # structure fixed from the first step (a lax.scan carry, a jit cache hit)
    state = monitor.init(params)
    shapes = jax.eval_shape(lambda p: monitor.update(p, state, p)[1].measurements, params)
    return state._replace(measurements=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                                    shapes))
  return optax.GradientTransformationExtraArgs(init, monitor.update)


def find_monitor_state(opt_state) -> MonitorReading:
  """Every measurement of :func:`gradient_flow_monitor` in an optimizer state.

  Raises:
    LookupError: the state has no ``gradient_flow_monitor()``.
  """
  values = [optax.tree.get(opt_state, PREFIX + k) for k in ("count", "grad_norms", "global_norm",
                                                           "nonfinite")]
  if values[1] is None:
    raise LookupError("expected an optimizer state containing gradient_flow_monitor()'s state")
  return MonitorReading(*values)


class StopState(NamedTuple):
  """State of :func:`stop_if_nonfinite`: the inner state and whether the run
  has stopped (a non-finite gradient arrived)."""
  inner: Any
  stopped: jax.Array


def stop_if_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Wraps a transformation so that the first non-finite gradient stops the
  run: from that step on every update is zero and the inner state is frozen,
  so the parameters stay the last finite ones. Unlike
  ``optax.apply_if_finite`` (which skips bad steps and carries on), nothing
  is applied again; read the flag with :func:`stopped`. Costs one global norm
  and one select per leaf; no host sync."""
  def init(params):
    return StopState(inner.init(params), jnp.zeros((), bool))

  def update(updates, state, params=None, **extra):
    bad = ~jnp.isfinite(_norms.norm_of_norms(jax.tree.map(_norms.leaf_norm, updates)))
    halt = state.stopped | bad
    new_updates, new_inner = inner.update(updates, state.inner, params, **extra)
    new_updates = jax.tree.map(lambda u: jnp.where(halt, jnp.zeros_like(u), u), new_updates)
    new_inner = jax.tree.map(lambda n, o: jnp.where(halt, o, n), new_inner, state.inner)
    return new_updates, StopState(new_inner, halt)

  return optax.GradientTransformationExtraArgs(init, update)


def stopped(opt_state) -> jax.Array:
  """True once :func:`stop_if_nonfinite` has seen a non-finite gradient."""
  if isinstance(opt_state, StopState):
    return opt_state.stopped
  value = optax.tree.get(opt_state, "stopped")
  if value is None:
    raise LookupError("expected an optimizer state of stop_if_nonfinite(...)")
  return value


def moment_norms(opt_state) -> dict[str, Any]:
  """Per-leaf norms of an optimizer's moment estimates, ``{"mu": tree,
  "nu": tree}`` for Adam-family states (whichever are present): how large
  the first moment (the smoothed gradient) and second moment (its squared
  scale) are per parameter."""
  out = {}
  for name in ("mu", "nu"):
    value = optax.tree.get(opt_state, name)
    if value is not None:
      out[name] = jax.tree.map(_norms.leaf_norm, value)
  return out
