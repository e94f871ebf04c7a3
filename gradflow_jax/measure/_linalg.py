"""Linear algebra behind every Jacobian and Hessian measurement: exact
singular values, the power method, Lanczos (one loop for one problem, a
batch of rows or blocks of any shapes) with its Ritz values (the top
singular value, the top-k algebraic eigenvalues, Gauss quadrature) and
Hutchinson's estimator. Matrix-free methods take only the
maps v -> J v and u -> J^T u (jvp and vjp), so they never build J.

References:
  Golub & Van Loan, Matrix Computations (4th ed.), sections 10.1 and 10.3;
  Parlett, The Symmetric Eigenvalue Problem, thm 11.7.1;
  Hutchinson (1990), A stochastic estimator of the trace of the influence
  matrix for Laplacian smoothing splines.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

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
  converged); see :func:`lanczos`."""
  sigma, converged = lanczos_rows(lambda v: rmatvec(matvec(v[0]))[None], v0[None], steps, tol)
  return sigma[0], converged[0]


def lanczos_rows(operator, v0: jax.Array, steps: int, tol: float):
  """:func:`lanczos` for a batch of independent problems held as rows: row b
  of ``v0`` (rows, n) starts problem b, and ``operator(v)`` returns
  J_b^T J_b v_b for every row (one batched jvp + vjp of a model whose
  examples do not interact). Full reorthogonalization. Returns (sigma,
  converged), each (rows,)."""
  n = v0.shape[-1]
  return lanczos(operator, v0, min(steps, n), tol, dot=lambda a, b: jnp.sum(a * b, -1),
                 scale=lambda c, v: c[..., None] * v, dim=n, reorthogonalize=True)


class Tridiagonal(NamedTuple):
  """What Lanczos leaves behind, per problem (leading axes P).

  Attributes:
    alphas: (P..., steps) the diagonal of T = Q^T A Q.
    betas: (P..., steps) betas[i] couples steps i and i + 1 (its last entry is
      the residual norm, the coupling to the step not taken); 0 from a
      breakdown on.
    done: (P...) bool, the Krylov space became invariant: a breakdown (beta at
      rounding level), a non-finite beta, or (reorthogonalized) the steps
      spanned the whole space. Steps after it hold zeros.
    basis: the Lanczos vectors q_i, a pytree like ``v0`` with a leading axis
      of steps (rows after a breakdown are zero); ``None`` without
      reorthogonalization.
  """
  alphas: jax.Array
  betas: jax.Array
  done: jax.Array
  basis: Any


def lanczos(operator, v0, steps: int, tol: float, *, dot, scale, dim, reorthogonalize: bool):
  """Top singular value of J for many independent problems at once, from
  ``steps`` Lanczos steps on the symmetric operator J^T J, matrix-free:
  :func:`lanczos_tridiagonal` then :func:`ritz_top`.

  Returns (sigma, converged), each shaped P: converged when the eigenvalue
  error bound of :func:`ritz_top` is within ``tol`` (relative), at a
  breakdown, or (reorthogonalized) when the steps span the whole space.
  """
  t = lanczos_tridiagonal(operator, v0, steps, dot=dot, scale=scale, dim=dim,
                          reorthogonalize=reorthogonalize)
  return ritz_top(t.alphas, t.betas, t.done, tol)


def lanczos_tridiagonal(operator, v0, steps: int, *, dot, scale, dim,
                        reorthogonalize: bool) -> Tridiagonal:
  """``steps`` Lanczos steps on a symmetric operator A for many independent
  problems at once, matrix-free: the tridiagonal T = Q^T A Q of each.

  The vectors are any pytree (``v0``); ``dot(a, b)`` gives every problem's
  inner product (an array P of them) and ``scale(c, v)`` multiplies each
  problem's part of ``v`` by its entry of ``c`` (shape P). ``dim`` (P, or a
  scalar) is each problem's dimension.

  With ``reorthogonalize`` every new vector is orthogonalized (twice)
  against the basis, which is kept (steps vectors), and a problem stops once
  its steps span its space; without, no basis is kept: floating point then
  produces duplicate Ritz values but leaves the largest one accurate (Paige
  1976; Golub & Van Loan, section 10.3).

  A breakdown (beta at rounding level: the Krylov space is invariant, as on
  rank-deficient ReLU Jacobians or Hessians, with their large null spaces)
  ends a problem's iteration there rather than normalising noise (which
  inflated estimates 1e9-fold); its Ritz values are then exact for the
  component of ``v0`` it holds. Returns a :class:`Tridiagonal`, steps on
  the last axis of alphas and betas.
  """
  leaves = jax.tree.leaves(v0)
  dtype = jnp.result_type(*leaves)
  eps = jnp.finfo(dtype).eps
  sub = lambda a, b: jax.tree.map(jnp.subtract, a, b)
  v = scale(jax.lax.rsqrt(jnp.maximum(dot(v0, v0), jnp.finfo(dtype).tiny)), v0)
  zero = jnp.zeros_like(dot(v, v))
  threshold = 64 * eps * jnp.sqrt(jnp.asarray(dim, dtype))

  def orthogonalize(basis, w):
    for _ in range(2):  # twice for stability
      c = jax.vmap(dot, (0, None))(basis, w)  # (steps, P)
      w = sub(w, jax.tree.map(lambda b: jnp.sum(b, 0), jax.vmap(scale)(c, basis)))
    return w

  def body(i, state):
    basis, alphas, betas, v, v_prev, beta, size, done = state
    if reorthogonalize:
      basis = jax.tree.map(lambda b, x: b.at[i].set(x), basis, v)
    w = operator(v)
    alpha = dot(v, w)
    w = sub(sub(w, scale(alpha, v)), scale(beta, v_prev))
    if reorthogonalize:
      w = orthogonalize(basis, w)
    beta_new = jnp.sqrt(jnp.maximum(dot(w, w), 0))
    size = jnp.maximum(size, jnp.abs(alpha) + beta + beta_new)
    stopped = done
    done = done | (beta_new <= threshold * size) | ~jnp.isfinite(beta_new)
    if reorthogonalize:  # the basis spans the whole space: what is left is noise
      done = done | (i + 1 >= jnp.asarray(dim))
    alpha = jnp.where(stopped, 0, alpha)
    beta_new = jnp.where(done, 0, beta_new)
    inverse = jnp.where(done, 0, 1 / jnp.where(done, 1, beta_new))
    return (basis, alphas.at[i].set(alpha), betas.at[i].set(beta_new), scale(inverse, w), v,
            beta_new, size, done)

  basis = jax.tree.map(lambda x: jnp.zeros((steps,) + x.shape, x.dtype), v) \
      if reorthogonalize else None
  coefficients = jnp.zeros((steps,) + zero.shape, dtype)
  init = (basis, coefficients, coefficients, v, jax.tree.map(jnp.zeros_like, v), zero, zero,
          jnp.zeros(zero.shape, bool))
  basis, alphas, betas, _, _, _, _, done = jax.lax.fori_loop(0, steps, body, init)
  full = (jnp.asarray(dim) <= steps) & reorthogonalize  # the steps spanned the space
  return Tridiagonal(jnp.moveaxis(alphas, 0, -1), jnp.moveaxis(betas, 0, -1), done | full,
                     basis)


def ritz_top(a, b, done, tol):
  """The largest Ritz value's square root (the top singular value of J when
  the tridiagonals come from Lanczos on J^T J) of each tridiagonal (alphas
  ``a``, betas ``b``, last axis: steps) and whether it has converged: its
  eigenvalue error bound (residual^2 / gap) within ``tol``, or the Krylov
  space invariant (``done``). NaN, not converged, for a tridiagonal holding
  NaN/Inf."""
  diag = lambda t, k: jnp.vectorize(lambda r: jnp.diag(r, k), signature="(n)->(m,m)")(t)
  tri = diag(a, 0) + diag(b[..., :-1], 1) + diag(b[..., :-1], -1)
  tri, finite = finite_matrices(tri)
  theta, vecs = jnp.linalg.eigh(tri)
  top = jnp.where(finite, jnp.maximum(theta[..., -1], 0), jnp.nan)
  residual = jnp.abs(b[..., -1] * vecs[..., -1, -1])
  # eigenvalue error <= residual^2 / gap (Parlett, The Symmetric Eigenvalue
  # Problem, thm 11.7.1), the gap taken to the next distinct Ritz value
  if a.shape[-1] > 1:
    gap = theta[..., -1] - theta[..., -2]
    error = jnp.minimum(residual, residual**2 / jnp.maximum(gap, 1e-30))
    distinct = gap > 1e-3 * top  # a duplicate (no reorthogonalisation) says nothing
    error = jnp.where(distinct, error, residual)
  else:
    error = residual
  return jnp.sqrt(top), ((error <= tol * top) | done) & finite


def ritz(t: Tridiagonal):
  """Eigenpairs of each tridiagonal of ``t`` over the steps it took.

  Returns (theta, vectors, taken, finite): theta (P..., steps) the Ritz
  values ascending; vectors (P..., steps, steps) T's eigenvectors as columns;
  taken (P..., steps) bool, which pairs are Ritz pairs (the steps after a
  breakdown come first, each at a value below all the others, and are not
  eigenvalue estimates); finite (P...) whether T was finite (otherwise theta
  is NaN).
  """
  a, b = t.alphas, t.betas
  steps = a.shape[-1]
  b = jnp.concatenate([b[..., :-1], jnp.zeros_like(b[..., :1])], -1)  # the couplings in T
  ones = jnp.ones_like(a[..., :1], bool)
  took = jnp.cumprod(jnp.concatenate([ones, b[..., :-1] != 0], -1), -1).astype(bool)
  radius = jnp.abs(b) + jnp.abs(jnp.concatenate([jnp.zeros_like(b[..., :1]), b[..., :-1]], -1))
  lower = jnp.min(jnp.where(took, a - radius, jnp.inf), -1, keepdims=True)  # Gershgorin
  upper = jnp.max(jnp.where(took, a + radius, -jnp.inf), -1, keepdims=True)
  below = lower - 1 - jnp.abs(lower) - (upper - lower)  # apart from every Ritz value
  a = jnp.where(took, a, below)
  diag = lambda d, k: jnp.vectorize(lambda r: jnp.diag(r, k), signature="(n)->(m,m)")(d)
  tri = diag(a, 0) + diag(b[..., :-1], 1) + diag(b[..., :-1], -1)
  tri, finite = finite_matrices(tri)
  theta, vectors = jnp.linalg.eigh(tri)
  index = jnp.broadcast_to(jnp.arange(steps), a.shape)
  taken = index >= steps - jnp.sum(took, -1, keepdims=True)
  return jnp.where(finite[..., None], theta, jnp.nan), vectors, taken, finite


def ritz_top_k(t: Tridiagonal, k: int, tol: float):
  """The ``k`` largest algebraic Ritz values of each tridiagonal (negative
  values allowed: Hessians are indefinite), descending, with their error
  bounds.

  The bound on |theta_j - lambda| is min(r_j, r_j^2 / gap_j), r_j = beta_m
  |s_mj| the residual norm of the Ritz pair and gap_j the distance to the
  nearest other Ritz value (Parlett, The Symmetric Eigenvalue Problem, thm
  11.7.1; 0 after a breakdown). Returns (values, errors, converged, top):
  each of the first three (P..., k), converged when the bound is within
  ``tol`` times the largest Ritz value in magnitude (the operator's norm as
  far as the Krylov space shows it); top (P..., steps) the largest Ritz
  value's eigenvector of T (its Ritz vector's coordinates in the basis).
  NaN, not converged, where T held NaN/Inf or the Krylov space held fewer
  than k directions.
  """
  theta, vectors, taken, finite = ritz(t)
  residual = jnp.abs(t.betas[..., -1:] * vectors[..., -1, :])
  inf = jnp.full_like(theta[..., :1], jnp.inf)
  spaced = jnp.where(taken, theta, -jnp.inf)
  gap = jnp.minimum(jnp.concatenate([spaced[..., 1:], inf], -1) - spaced,
                    spaced - jnp.concatenate([-inf, spaced[..., :-1]], -1))
  error = jnp.minimum(residual, residual**2 / jnp.maximum(gap, jnp.finfo(theta.dtype).tiny))
  norm = jnp.max(jnp.where(taken, jnp.abs(theta), 0), -1, keepdims=True)
  ok = taken & finite[..., None]
  converged = ok & (error <= tol * norm)
  top = lambda x: x[..., ::-1][..., :k]
  nan = lambda x: jnp.where(top(ok), top(x), jnp.nan)
  return nan(theta), nan(error), top(converged), vectors[..., :, -1]


def ritz_quadrature(t: Tridiagonal):
  """Gauss quadrature of each problem's spectral measure from its
  tridiagonal: nodes (P..., steps) the Ritz values, weights (P..., steps)
  the squared first components of T's eigenvectors, summing to 1, so that
  sum_j w_j f(theta_j) approximates q_1^T f(A) q_1, exactly for polynomials
  of degree < 2 steps (Golub & Meurant, Matrices, Moments and Quadrature,
  2010). Steps after a breakdown give node 0 with weight 0; NaN where T held
  NaN/Inf.
  """
  theta, vectors, taken, finite = ritz(t)
  w = jnp.where(taken, vectors[..., 0, :] ** 2, 0)
  w = w / jnp.sum(w, -1, keepdims=True)
  nodes = jnp.where(taken, theta, 0)
  return (jnp.where(finite[..., None], nodes, jnp.nan),
          jnp.where(finite[..., None], w, jnp.nan))


def hutchinson(squares: Callable, probes: jax.Array):
  """Hutchinson's estimator of ||J||_F^2: the mean over the probe vectors
  v ~ N(0, I) (``probes``, stacked on the leading axis) of ``squares(v)``, a
  pytree of ||J v||^2 values (per example, per output, ...), since
  E ||J v||^2 = ||J||_F^2. Relative standard error about
  sqrt(2 / (probes k)) for a well-spread spectrum over k directions."""
  return jax.tree.map(lambda a: jnp.mean(a, 0), jax.lax.map(squares, probes))
