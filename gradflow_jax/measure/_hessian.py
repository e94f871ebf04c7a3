"""Curvature of any loss over a parameter pytree, matrix-free: Hessian-vector
products and the top of the Hessian's spectrum, whole and per parameter leaf
(preconditioned, and the thresholds to compare with: ``_stability``; the
whole spectrum: ``_spectrum``).

Every measurement is Lanczos with full reorthogonalization
(:func:`gradflow_jax.measure._linalg.lanczos_tridiagonal`) on Hessian-vector
products of ``jax.linearize(jax.grad(loss_fn))``: the gradient is linearized
once (its residuals are kept, as for a backward pass), so each Lanczos step
costs one tangent pass (about a forward and a backward pass), and the basis
holds ``steps`` vectors the size of params, held flat (:func:`flat_hvp`).

References:
  Pearlmutter (1994), Fast exact multiplication by the Hessian.
  Cohen, Kaur, Li, Kolter, Talwalkar (2021), Gradient descent on neural
  networks typically occurs at the edge of stability, arXiv:2103.00065.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradflow_jax.measure import _linalg


class HessianTop(NamedTuple):
  """The largest algebraic eigenvalues of a (possibly preconditioned) Hessian.

  Attributes:
    eigenvalues: (k,) descending, in loss units per squared parameter unit;
      negative values are negative curvature. NaN where the Hessian-vector
      products were non-finite or the Krylov space held fewer than k
      directions.
    vector: the top eigenvector estimate (unit norm), a pytree like params:
      pass it as ``v0`` to the next call to start there (warm start).
    converged: (k,) bool, the error bound is within ``tol`` times the
      largest Ritz value in magnitude (or the Krylov space was invariant).
    error: (k,) the bound on each value's distance to the nearest
      eigenvalue, min(r, r^2 / gap), r = |H u - theta u| (some eigenvalue
      lies within r) and the gap taken between Ritz values (Parlett, thm
      11.7.1: sound once the values have settled, optimistic before). Like
      every Krylov method, Lanczos cannot see an eigenvector orthogonal to
      its start vector.
  """
  eigenvalues: jax.Array
  vector: Any
  converged: jax.Array
  error: jax.Array


class BlockSharpness(NamedTuple):
  """The top eigenvalue of each diagonal block H_ll of the Hessian (the
  curvature along one parameter leaf with every other leaf held fixed).

  Attributes:
    eigenvalues: (L,) one per leaf, in ``jax.tree.leaves(params)`` order
      (``jax.tree.unflatten(jax.tree.structure(params), list(x))`` keys them
      by layer).
    vector: the per-leaf top eigenvectors (each leaf unit norm), a pytree
      like params; the ``v0`` of a warm start.
    converged: (L,) bool, as for :class:`HessianTop`.
    error: (L,) the error bound on each eigenvalue.
  """
  eigenvalues: jax.Array
  vector: Any
  converged: jax.Array
  error: jax.Array


def hvp(loss_fn: Callable, params, batch, v):
  """Hessian-vector product H v of ``loss_fn(params, batch)`` with respect to
  ``params``, forward-over-reverse (``jax.jvp`` of ``jax.grad``): about the
  cost of two gradients. ``v`` is a pytree like params; so is the result."""
  _check_like("v", v, params)
  return jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (v,))[1]


def hessian_top(loss_fn: Callable, params, batch, *, k: int = 1, steps: int = 20,
                tol: float = 1e-3, v0=None, key: jax.Array | None = None) -> HessianTop:
  """The ``k`` largest eigenvalues of the Hessian of ``loss_fn(params,
  batch)`` (the sharpness, k = 1) from ``steps`` Lanczos steps.

  Gradient descent with learning rate lr is stable on a quadratic only while
  the sharpness stays below :func:`stability_threshold` (2 / lr); in
  full-batch training it rises to that value and hovers there (the edge of
  stability, Cohen et al. 2021).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: a pytree of floating arrays of one dtype.
    batch: anything ``loss_fn`` takes.
    k: how many eigenvalues (at most min(steps, number of parameters)).
    steps: Lanczos steps (Hessian-vector products); capped at the number of
      parameters. The top eigenvalue usually converges in 10-30.
    tol: relative tolerance of the convergence flags.
    v0: start vector, a pytree like params, e.g. the previous call's
      ``vector`` (a warm start converges in a few steps when the top
      eigenvector moved little); default: Gaussian from ``key``.
    key: random key for the start vector (default ``jax.random.key(0)``).

  Returns:
    :class:`HessianTop`. Example::

      top = jax.jit(lambda p, b: hessian_top(loss_fn, p, b, k=2))(params, batch)

  Raises:
    ValueError: bad k, steps, tol, or a v0 unlike params.
  """
  n = _check(params, k=k, steps=steps, tol=tol)
  v0 = _start(params, v0, key)
  h, unravel = flat_hvp(loss_fn, params, batch)
  return _top(h, v0, unravel, n, k, steps, tol)


def block_sharpness(loss_fn: Callable, params, batch, *, steps: int = 20, tol: float = 1e-3,
                    v0=None, key: jax.Array | None = None) -> BlockSharpness:
  """The top eigenvalue of every diagonal block H_ll of the Hessian: the
  sharpness of the loss along parameter leaf l alone (per layer sharpness).

  All blocks run in one batched Lanczos (problem l = leaf l, each stopping
  when its steps span its leaf). H_ll v_l is exact: the Hessian-vector
  product of the vector that is v_l on leaf l and zero elsewhere, keeping
  leaf l, so each step costs one Hessian-vector product per leaf (L of them,
  vmapped: L times the memory of one). Fine for small models; the top of
  the whole Hessian (:func:`hessian_top`) costs one per step.

  Args: as :func:`hessian_top` (``v0``: one start vector per leaf).

  Returns:
    :class:`BlockSharpness`, one entry per leaf of ``jax.tree.leaves(params)``.
  """
  _check(params, k=1, steps=steps, tol=tol)
  v0 = _start(params, v0, key)
  sizes = np.array([np.size(x) for x in jax.tree.leaves(params)])
  count = len(sizes)
  ids = np.repeat(np.arange(count), sizes)  # the leaf of every flat coordinate
  h, unravel = flat_hvp(loss_fn, params, batch)

  def operator(v):  # row l: v on leaf l, zero elsewhere; keep leaf l of its product
    rows = jnp.where(ids[None, :] == np.arange(count)[:, None], v[None, :], 0)
    return jax.vmap(h)(rows)[ids, np.arange(len(ids))]

  dot = lambda a, b: jax.ops.segment_sum(a * b, ids, count, indices_are_sorted=True)
  t = _linalg.lanczos_tridiagonal(operator, v0, int(min(steps, sizes.max())), dot=dot,
                                  scale=lambda c, v: c[ids] * v, dim=jnp.asarray(sizes),
                                  reorthogonalize=True)
  values, error, converged, y = _linalg.ritz_top_k(t, 1, tol)
  vector = unravel(jnp.sum(y[ids].T * t.basis, 0))
  return BlockSharpness(values[:, 0], vector, converged[:, 0], error[:, 0])


def flat_hvp(loss_fn: Callable, params, batch):
  """(v -> H v on flat vectors, unravel): the gradient linearized once.
  Vectors are held flat (``ravel_pytree`` order = leaves order): one array
  operation per Lanczos operation whatever the number of leaves (per-leaf
  pytree arithmetic compiled 3x slower on a 6-leaf MLP)."""
  flat, unravel = ravel_pytree(params)
  _, h = jax.linearize(jax.grad(lambda f: loss_fn(unravel(f), batch)), flat)
  return h, unravel


def _top(h: Callable, v0, unravel, n: int, k: int, steps: int, tol: float) -> HessianTop:
  """Top-k Lanczos on a symmetric operator ``h`` over flat vectors."""
  t = _linalg.lanczos_tridiagonal(h, v0, min(steps, n), dot=jnp.vdot,
                                  scale=lambda c, v: c * v, dim=n, reorthogonalize=True)
  values, error, converged, y = _linalg.ritz_top_k(t, k, tol)
  return HessianTop(values, unravel(y @ t.basis), converged, error)


def _start(params, v0, key) -> jax.Array:
  """The flat start vector: ``v0``, or Gaussian from ``key`` (default key 0)."""
  flat = ravel_pytree(params)[0]
  if v0 is not None:
    _check_like("v0", v0, params)
    return ravel_pytree(v0)[0].astype(flat.dtype)
  return jax.random.normal(jax.random.key(0) if key is None else key, flat.shape, flat.dtype)


def _check(params, **kw) -> int:
  """Checks before tracing; returns the number of parameters."""
  leaves = jax.tree.leaves(params)
  dtypes = {jnp.result_type(x) for x in leaves}
  if not leaves or len(dtypes) != 1 or not jnp.issubdtype(dtypes.pop(), jnp.floating):
    raise ValueError("expected params with floating leaves of one dtype, got dtypes "
                     f"{sorted({str(jnp.result_type(x)) for x in leaves})}")
  for name in ("k", "steps"):
    if name in kw and not (isinstance(kw[name], (int, np.integer)) and kw[name] >= 1):
      raise ValueError(f"expected {name} a positive int, got {kw[name]!r}")
  if "tol" in kw and not (isinstance(kw["tol"], (int, float, np.floating)) and kw["tol"] > 0):
    raise ValueError(f"expected tol > 0, got {kw['tol']!r}")
  n = sum(int(np.prod(np.shape(x))) for x in leaves)
  k = kw.get("k", 1)
  if k > min(kw.get("steps", k), n):
    raise ValueError(f"expected k <= min(steps, number of parameters) = "
                     f"{min(kw.get('steps', k), n)}, got k={k}")
  return n


def _check_like(name: str, tree, params) -> None:
  same = jax.tree.structure(tree) == jax.tree.structure(params) and all(
      np.shape(a) == np.shape(b) for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(params)))
  if not same:
    shapes = lambda t: jax.tree.map(np.shape, t)
    raise ValueError(f"expected {name} a pytree like params {shapes(params)}, "
                     f"got {shapes(tree)}")
