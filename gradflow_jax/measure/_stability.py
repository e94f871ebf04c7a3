"""The edge of stability: the sharpness an optimizer actually sees (the
preconditioned Hessian's top eigenvalue for Adam) and the threshold above
which its step is unstable on a quadratic.

References:
  Cohen, Kaur, Li, Kolter, Talwalkar (2021), Gradient descent on neural
  networks typically occurs at the edge of stability, arXiv:2103.00065
  (thresholds 2 / lr, and with momentum, appendix).
  Cohen, Ghorbani, Krishnan, Agarwal, Medapati, et al. (2022), Adaptive
  gradient methods at the edge of stability, arXiv:2207.14484 (Adam: the
  preconditioned sharpness settles at (2 + 2 b1) / ((1 - b1) lr), 38 / lr
  for b1 = 0.9).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from gradflow_jax.measure import _hessian


def preconditioned_sharpness(loss_fn: Callable, params, batch, preconditioner, *, k: int = 1,
                             steps: int = 20, tol: float = 1e-3, v0=None,
                             key: jax.Array | None = None) -> _hessian.HessianTop:
  """The ``k`` largest eigenvalues of P^{-1} H, H the Hessian of
  ``loss_fn(params, batch)`` and P a diagonal preconditioner: the curvature
  that a preconditioned step x -= lr P^{-1} m sees. For Adam, P from
  :func:`adam_preconditioner`; full-batch Adam keeps this below, and
  hovering at, ``adam_stability_threshold(lr, b1)`` (38 / lr for b1 = 0.9;
  Cohen et al. 2022).

  P^{-1} H is similar to the symmetric P^{-1/2} H P^{-1/2} (same
  eigenvalues), on which Lanczos runs: one Hessian-vector product per step.

  Args:
    preconditioner: P, a pytree like params of positive entries (a zero or
      negative entry makes the result NaN, not converged).
    others: as :func:`gradflow_jax.measure.hessian_top`.

  Returns:
    :class:`HessianTop`; its ``vector`` u is in the symmetric form's
    coordinates (the eigenvector of P^{-1} H is P^{-1/2} u), and is what
    ``v0`` takes for a warm start.

  Raises:
    ValueError: as :func:`hessian_top`, or a preconditioner unlike params.
  """
  n = _hessian._check(params, k=k, steps=steps, tol=tol)
  _hessian._check_like("preconditioner", preconditioner, params)
  v0 = _hessian._start(params, v0, key)
  h, unravel = _hessian.flat_hvp(loss_fn, params, batch)
  flat = ravel_pytree(jax.tree.map(lambda p, x: jnp.asarray(p, x.dtype), preconditioner,
                                   params))[0]
  s = jax.lax.rsqrt(flat)
  return _hessian._top(lambda u: s * h(s * u), v0, unravel, n, k, steps, tol)


def adam_preconditioner(state, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
  """Adam's diagonal preconditioner P = (1 - b1^t) (sqrt(v_hat) + eps), a
  pytree like params, as Cohen et al. (2022) write Adam: the step is
  lr P^{-1} m with m the (uncorrected) first-moment EMA, so the factor
  (1 - b1^t) carries m's bias correction and v_hat = nu / (1 - b2^t) is
  nu's. The learning rate is not in P: compare the top eigenvalue of
  P^{-1} H with ``adam_stability_threshold(lr, b1)``.

  Args:
    state: optax's ``ScaleByAdamState`` (its ``nu`` and ``count`` = t: the
      preconditioner of the update that produced the state) or a tuple
      ``(nu, count)``. Count 0 (no update yet) is taken as 1.
    b1, b2, eps: Adam's, as given to ``optax.adam`` (``eps_root`` 0).

  Returns:
    P, for :func:`preconditioned_sharpness`.
  """
  nu, count = (state.nu, state.count) if hasattr(state, "nu") else state
  t = jnp.maximum(jnp.asarray(count), 1)
  momentum, second = 1 - jnp.asarray(b1) ** t, 1 - jnp.asarray(b2) ** t
  return jax.tree.map(
      lambda v: (momentum * (jnp.sqrt(v / second.astype(v.dtype)) + eps)).astype(v.dtype), nu)


def stability_threshold(lr, momentum: float = 0.0, nesterov: bool = False):
  """The largest Hessian eigenvalue at which gradient descent with learning
  rate ``lr`` is still stable on a quadratic: 2 / lr; with heavy-ball
  momentum b (optax ``sgd(lr, momentum=b)``) (2 + 2 b) / lr; with Nesterov
  momentum (2 + 2 b) / ((1 + 2 b) lr). Full-batch training drives the
  sharpness (:func:`hessian_top`) up to this value, where it stays (Cohen
  et al. 2021, and appendix for momentum). In 1/(lr units)."""
  b = jnp.asarray(momentum)
  return (2 + 2 * b) / ((1 + 2 * b) if nesterov else 1) / lr


def adam_stability_threshold(lr, b1: float = 0.9):
  """The preconditioned-sharpness threshold of Adam with momentum ``b1``:
  (2 + 2 b1) / ((1 - b1) lr), 38 / lr for b1 = 0.9 (Cohen et al. 2022,
  Adam being heavy-ball momentum b1 with step (1 - b1) lr on P^{-1} H, P =
  (1 - b1^t) (sqrt(v_hat) + eps), :func:`adam_preconditioner`)."""
  return (2 + 2 * jnp.asarray(b1)) / ((1 - jnp.asarray(b1)) * lr)
