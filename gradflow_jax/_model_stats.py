"""Statistics of any probed model (see ``_probe``): per tap, the activation
statistics, the gradient arriving there, and matrix-free Jacobian norms."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradflow_jax import _activations, _jacobians, _losses, _probe
from gradflow_jax._stats import ActivationStats, _count, _dead_fraction, _moments


class ModelFlowStats(NamedTuple):
  """Per tap (in the order the model records them), each array (n_taps,).

  Attributes:
    names: tap names.
    activations: :class:`ActivationStats` of the tapped tensors. With an
      activation named for a tap (the tap being that activation's input),
      saturation and dead fractions use the registry's tests; otherwise
      saturation is NaN and a dead unit is one whose value is exactly 0 on
      every example.
    tap_grad_norm: ||dL/d tap||, the backward signal at each tap.
    param_grad_norms: a pytree like the parameters, ||dL/dp|| per leaf.
    global_norm: ``optax.tree.norm`` of all parameter gradients.
    loss: the loss value.
  """
  names: tuple[str, ...]
  activations: ActivationStats
  tap_grad_norm: jax.Array
  param_grad_norms: Any
  global_norm: jax.Array
  loss: jax.Array


def _tap_stats(v, act):
  v = v.astype(jnp.promote_types(v.dtype, jnp.float32))
  (mean, std, vmin, vmax), n_finite = _moments(v)
  units = v.reshape(-1, v.shape[-1]) if v.ndim > 1 else v.reshape(-1, 1)
  if act is None:
    sat = jnp.asarray(jnp.nan, v.dtype)
    dead = _dead_fraction(units == 0)
  else:
    sat = _count(act.is_saturated(v), v.dtype) / v.size
    dead = _dead_fraction(act.is_inactive(units))
  return (mean, std, vmin, vmax, sat, dead, _count(v == 0, v.dtype) / v.size,
          (v.size - n_finite).astype(jnp.int32))


def _loss_fn(loss):
  if callable(loss):
    return loss
  _losses.check_loss_name(loss)
  return _named_loss(loss)


@functools.cache
def _named_loss(loss: str):
  """One function object per loss name, so jit's cache (keyed on it) hits."""
  return lambda out, y: _losses.loss_value(loss, out, y)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _model_stats_jit(forward, params, x, y, loss_fn, acts):
  shapes = _probe.discover_taps(forward, params, x)
  perturb = _probe.zero_perturbations(shapes)

  def objective(p, pt):
    out, taps = forward(p, x, pt)
    return loss_fn(out, y), taps

  (value, taps), (gp, gt) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
      params, perturb)
  names = list(shapes)  # execution order (the aux dict came back sorted)
  acts = dict(acts)
  rows = [_tap_stats(taps[n], acts.get(n)) for n in names]
  stats = ActivationStats(*(jnp.stack(c) for c in zip(*rows)))
  leaf_norm = lambda g: jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
  return (stats, jnp.stack([leaf_norm(gt[n]) for n in names]), jax.tree.map(leaf_norm, gp),
          optax.tree.norm(gp), value)


def model_flow_stats(forward: Callable, params, x, y, loss="cross_entropy",
                     activations: dict[str, str] | None = None) -> ModelFlowStats:
  """Activation and gradient statistics of every tap from one jitted pass.

  Args:
    forward: a probed forward function (:func:`probed`, :func:`from_linen`,
      :func:`from_nnx`).
    params: what ``forward`` differentiates (linen variables, an NNX state, a
      pytree).
    x, y: a batch and its targets.
    loss: ``"cross_entropy"``, ``"mse"`` or ``loss(output, y) -> scalar``.
    activations: optional {tap name: activation name} for taps that are an
      activation's input, so saturation and dead units use its tests.

  Raises:
    ValueError: the model records no taps, or unknown names.
  """
  acts = tuple(sorted((k, _activations.get_activation(v)) for k, v in (activations or {}).items()))
  shapes = _probe.discover_taps(forward, params, x)
  if not shapes:
    raise ValueError("expected at least one tapped layer (Dense/Linear/Conv outputs, or "
                     "gradflow_jax.tap calls), got none")
  unknown = set(dict(acts)) - set(shapes)
  if unknown:
    raise ValueError(f"expected activation names for taps among {sorted(shapes)}, got "
                     f"{sorted(unknown)}")
  stats, tap_norms, leaf_norms, gnorm, value = _model_stats_jit(
      forward, params, x, y, _loss_fn(loss), acts)
  return ModelFlowStats(tuple(shapes), stats, tap_norms, leaf_norms, gnorm, value)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _tap_jacobian_jit(forward, params, x, steps):
  shapes = _probe.discover_taps(forward, params, x)
  names = list(shapes)
  zero = _probe.zero_perturbations(shapes)
  key = jax.random.key(0)
  norms = []
  for i, name in enumerate(names):
    if i == 0:
      fn = lambda v: forward(params, v.reshape(x.shape), None)[1][name].reshape(-1)
      v0 = x.reshape(-1).astype(jnp.float32)
    else:
      prev = names[i - 1]
      def fn(v, prev=prev, name=name):
        pt = {**zero, prev: v.reshape(shapes[prev].shape).astype(shapes[prev].dtype)}
        return forward(params, x, pt)[1][name].reshape(-1)
      v0 = zero[prev].reshape(-1).astype(jnp.float32)
    _, vjp = jax.vjp(fn, v0)
    sigma, _ = _jacobians.lanczos_top_singular_value(
        lambda v: jax.jvp(fn, (v0,), (v,))[1], lambda u: vjp(u)[0],
        jax.random.normal(jax.random.fold_in(key, i), v0.shape), steps, 1e-5)
    norms.append(sigma)
  return jnp.stack(norms)


def tap_jacobian_norms(forward: Callable, params, x, steps: int = 32) -> jax.Array:
  """(n_taps,) spectral norm of d tap_l / d tap_(l-1) (l = 0: d tap_0 / dx) over
  the whole batch, by Lanczos on jvp/vjp (never forming a matrix). For a model
  whose examples do not interact this is the largest per-example norm."""
  return _tap_jacobian_jit(forward, params, jnp.asarray(x), int(steps))
