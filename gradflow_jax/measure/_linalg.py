"""Linear algebra behind every Jacobian measurement: exact singular values,
the power method, Lanczos (one problem, a batch of rows, the Ritz values of
a block run) and Hutchinson's estimator. Matrix-free methods take only the
maps v -> J v and u -> J^T u (jvp and vjp), so they never build J.

References:
  Golub & Van Loan, Matrix Computations (4th ed.), sections 10.1 and 10.3;
  Parlett, The Symmetric Eigenvalue Problem, thm 11.7.1;
  Hutchinson (1990), A stochastic estimator of the trace of the influence
  matrix for Laplacian smoothing splines.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def finite_matrices(m: jax.Array):
  """(m with every matrix holding a NaN/Inf replaced by zeros, which matrices
  were finite): LAPACK must never see a non-finite matrix (it prints
  "illegal value" and can loop without end)."""
  ok = jnp.all(jnp.isfinite(m), axis=(-2, -1))
  return jnp.where(ok[..., None, None], m, 0), ok


def singular_values(j: jax.Array, gram: bool = False) -> jax.Array:
  """Singular values of ``j``, descending: LAPACK's SVD, or with ``gram`` the
  square roots of the eigenvalues of the smaller Gram matrix (accurate for
  the large ones; the smallest lose precision below sqrt(eps) * sigma_max).
  NaN for a matrix holding NaN/Inf."""
  j, ok = finite_matrices(j)
  if not gram:
    sv = jnp.linalg.svd(j, compute_uv=False)
  else:
    g = jnp.swapaxes(j, -1, -2) @ j if j.shape[-1] <= j.shape[-2] else j @ jnp.swapaxes(j, -1, -2)
    g, ok_g = finite_matrices(g)  # the product itself may overflow
    ok = ok & ok_g
    sv = jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(g), 0))[..., ::-1]
  return jnp.where(ok[..., None], sv, jnp.nan)


def power_top_singular_value(matvec, rmatvec, v0, tol: float, max_iter: int):
  """Largest singular value of a linear map given only J v and J^T u.

  Power iteration on J^T J; stops when the estimate changes by less than
  ``tol`` (relative) between iterations. Returns (sigma, converged).
  """
  v0 = v0 / jnp.linalg.norm(v0)

  def cond(state):
    i, _, sigma, prev = state
    return (i < max_iter) & (jnp.abs(sigma - prev) > tol * sigma)

  def body(state):
    i, v, sigma, _ = state
    w = rmatvec(matvec(v))
    norm = jnp.linalg.norm(w)
    return i + 1, w / norm, jnp.sqrt(norm), sigma

  zero = jnp.zeros((), v0.dtype)
  i, v, sigma, prev = jax.lax.while_loop(cond, body, (0, v0, zero, zero + jnp.inf))
  sigma = jnp.linalg.norm(matvec(v))  # Rayleigh value at the final vector
  return sigma, (jnp.abs(sigma - prev) <= tol * sigma) | (i < max_iter)


def lanczos_top_singular_value(matvec, rmatvec, v0, steps: int, tol: float):
  """Largest singular value from up to ``steps`` Lanczos steps on J^T J (full
  reorthogonalization), matrix-free. Converges far faster than power iteration
  when the top singular values are close (random matrices). Returns (sigma,
  converged), converged when the Ritz residual bound beta_k |s_k| <= tol theta.

  Rank-deficient J (ReLU layers: J^T J has a large null space) makes the
  Krylov space invariant early: beta falls to rounding level. That is a
  breakdown, not a direction to normalise (dividing by it amplified noise
  into estimates 1e9 too large): the iteration stops there, and its Ritz
  value is then exact (the invariant space holds v0's component along the top
  singular vector).

  References:
    Golub & Van Loan, Matrix Computations (4th ed.), sections 10.1 and 10.3.
  """
  sigma, converged = lanczos_rows(lambda v: rmatvec(matvec(v[0]))[None], v0[None], steps, tol)
  return sigma[0], converged[0]


def lanczos_rows(operator, v0: jax.Array, steps: int, tol: float):
  """:func:`lanczos_top_singular_value` for a batch of independent problems
  at once: row b of ``v0`` (rows, n) starts problem b, and ``operator(v)``
  returns J_b^T J_b v_b for every row (one batched jvp + vjp of a model whose
  examples do not interact). Full reorthogonalisation per row; a row whose
  Krylov space became invariant (rank-deficient J) stops there. Returns
  (sigma, converged), each (rows,)."""
  rows, n = v0.shape
  steps = min(steps, n)
  eps = jnp.finfo(v0.dtype).eps
  v = v0 / jnp.linalg.norm(v0, axis=-1, keepdims=True)
  zero = jnp.zeros((rows,), v0.dtype)

  def body(i, state):
    basis, alphas, betas, v, v_prev, beta, scale, done = state
    basis = basis.at[i].set(v)
    w = operator(v)
    alpha = jnp.sum(v * w, -1)
    w = w - alpha[:, None] * v - beta[:, None] * v_prev
    for _ in range(2):  # full reorthogonalization, twice for stability
      w = w - jnp.einsum("srn,sr->rn", basis, jnp.einsum("srn,rn->sr", basis, w))
    beta_new = jnp.linalg.norm(w, axis=-1)
    scale = jnp.maximum(scale, jnp.abs(alpha) + beta + beta_new)
    stopped = done
    done = done | (beta_new <= 64 * n * eps * scale) | ~jnp.isfinite(beta_new)
    alpha = jnp.where(stopped, 0, alpha)
    beta_new = jnp.where(done, 0, beta_new)
    v_next = jnp.where(done[:, None], 0, w / jnp.where(done, 1, beta_new)[:, None])
    return (basis, alphas.at[i].set(alpha), betas.at[i].set(beta_new), v_next, v, beta_new,
            scale, done)

  init = (jnp.zeros((steps, rows, n), v0.dtype), jnp.zeros((steps, rows), v0.dtype),
          jnp.zeros((steps, rows), v0.dtype), v, jnp.zeros_like(v), zero, zero,
          jnp.zeros((rows,), bool))
  _, alphas, betas, _, _, _, _, done = jax.lax.fori_loop(0, steps, body, init)
  a, b = alphas.T, betas.T
  tri = jax.vmap(lambda a, b: jnp.diag(a) + jnp.diag(b[:-1], 1) + jnp.diag(b[:-1], -1))(a, b)
  tri, finite = finite_matrices(tri)
  theta, vecs = jnp.linalg.eigh(tri)
  top = jnp.where(finite, jnp.maximum(theta[:, -1], 0), jnp.nan)
  residual = jnp.abs(b[:, -1] * vecs[:, -1, -1])
  converged = (residual <= tol * top) | done | (steps == n)
  return jnp.sqrt(top), converged & jnp.isfinite(top)


def ritz_top(a, b, done, tol):
  """The largest Ritz value's square root (the top singular value of J when
  the tridiagonals come from Lanczos on J^T J) of each tridiagonal (alphas
  ``a``, betas ``b``, last axis: steps) and whether it has converged: its
  eigenvalue error bound (residual^2 / gap) within ``tol``, or the Krylov
  space invariant (``done``)."""
  tri = (jax.vmap(jax.vmap(jnp.diag))(a) + jax.vmap(jax.vmap(lambda t: jnp.diag(t[:-1], 1)))(b)
         + jax.vmap(jax.vmap(lambda t: jnp.diag(t[:-1], -1)))(b))
  theta, vecs = jnp.linalg.eigh(tri)
  top = jnp.maximum(theta[..., -1], 0)
  residual = jnp.abs(b[..., -1] * vecs[..., -1, -1])
  # eigenvalue error <= residual^2 / gap (Parlett, The Symmetric Eigenvalue
  # Problem, thm 11.7.1), the gap taken to the next distinct Ritz value
  gap = theta[..., -1] - theta[..., -2]
  error = jnp.minimum(residual, residual**2 / jnp.maximum(gap, 1e-30))
  distinct = gap > 1e-3 * top  # a duplicate (no reorthogonalisation) says nothing
  error = jnp.where(distinct, error, residual)
  return jnp.sqrt(top), (error <= tol * top) | done




def hutchinson(squares: Callable, probes: jax.Array):
  """Hutchinson's estimator of ||J||_F^2: the mean over the probe vectors
  v ~ N(0, I) (``probes``, stacked on the leading axis) of ``squares(v)``, a
  pytree of ||J v||^2 values (per example, per output, ...), since
  E ||J v||^2 = ||J||_F^2. Relative standard error about
  sqrt(2 / (probes k)) for a well-spread spectrum over k directions."""
  return jax.tree.map(lambda a: jnp.mean(a, 0), jax.lax.map(squares, probes))
