"""The whole Hessian spectrum, estimated: stochastic Lanczos quadrature (SLQ)
gives a smoothed eigenvalue density, Hutchinson's estimator the trace, both
from the same random probes.

References:
  Ubaru, Chen, Saad (2017), Fast estimation of tr(f(A)) via stochastic
  Lanczos quadrature, SIAM J. Matrix Anal. Appl. 38(4).
  Ghorbani, Krishnan, Xiao (2019), An investigation into neural net
  optimization via Hessian eigenvalue density, arXiv:1901.10159.
  Hutchinson (1990), A stochastic estimator of the trace of the influence
  matrix for Laplacian smoothing splines.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from gradflow_jax.measure import _hessian, _linalg


class HessianSpectrum(NamedTuple):
  """SLQ estimate of the Hessian's eigenvalue distribution.

  Attributes:
    nodes: (probes, steps) each probe's Ritz values (eigenvalue estimates;
      node 0 with weight 0 for steps after a breakdown).
    weights: (probes, steps) their quadrature weights, summing to 1 per
      probe: probe p's measure sum_j w_pj delta(x - nodes_pj) matches q_p^T
      f(H) q_p for polynomials f of degree < 2 steps; averaged over probes,
      the distribution of H's n eigenvalues (:func:`spectral_density`).
    top: (k,) the largest eigenvalues, descending: per rank the largest
      Ritz value over the probes (each is a lower bound, by interlacing).
    top_error: (k,) their error bounds.
    converged: (k,) bool, the bound within ``tol`` of the largest Ritz value
      in magnitude.
    trace: () Hutchinson's estimate of tr(H) (sum of eigenvalues, the
      Laplacian of the loss): the mean of v^T H v over the Rademacher
      probes v. tr(H) / n is the mean eigenvalue.
    trace_stderr: () its standard error (sample std over probes / sqrt of
      their number; NaN for one probe).
  """
  nodes: jax.Array
  weights: jax.Array
  top: jax.Array
  top_error: jax.Array
  converged: jax.Array
  trace: jax.Array
  trace_stderr: jax.Array


def hessian_spectrum(loss_fn: Callable, params, batch, key: jax.Array, *, num_probes: int = 8,
                     steps: int = 32, k: int = 5, tol: float = 1e-3,
                     probes_at_once: int | None = None) -> HessianSpectrum:
  """Eigenvalue density, trace and top eigenvalues of the Hessian of
  ``loss_fn(params, batch)`` from ``num_probes`` Rademacher probes, each
  running ``steps`` Lanczos steps (full reorthogonalization).

  Every probe's tridiagonal gives Gauss quadrature nodes and weights (Ritz
  values, squared first eigenvector components): SLQ (Ubaru et al. 2017).
  Its first entry alpha_1 = v^T H v / n is Hutchinson's sample, so the trace
  estimate costs nothing more. Ghorbani et al. (2019) read the density for
  outliers (a few large eigenvalues, as many as classes) beside a bulk near
  zero, and negative mass (non-convexity).

  Args:
    loss_fn, params, batch: as :func:`gradflow_jax.measure.hessian_top`.
    key: random key for the probes.
    num_probes: probes; the density's and trace's errors fall as
      1/sqrt(num_probes).
    steps: Lanczos steps per probe (capped at the number of parameters);
      resolves about ``steps`` features of the density.
    k: how many top eigenvalues (at most min(steps, parameters)).
    tol: relative tolerance of the convergence flags.
    probes_at_once: how many probes run together (vmapped; each holds a
      basis of ``steps`` parameter-sized vectors); default all.

  Returns:
    :class:`HessianSpectrum`.
  """
  n = _hessian._check(params, k=k, steps=steps, tol=tol)
  for name, value in (("num_probes", num_probes), ("probes_at_once", probes_at_once or 1)):
    if not (isinstance(value, int) and value >= 1):
      raise ValueError(f"expected {name} a positive int, got {value!r}")
  h, _ = _hessian.flat_hvp(loss_fn, params, batch)
  dtype = jax.tree.leaves(params)[0].dtype

  def probe(key):
    v = jax.random.rademacher(key, (n,), dtype)
    t = _linalg.lanczos_tridiagonal(h, v, min(steps, n), dot=jnp.vdot, scale=lambda c, v: c * v,
                                    dim=n, reorthogonalize=True)._replace(basis=None)
    nodes, weights = _linalg.ritz_quadrature(t)
    top, error, converged, _ = _linalg.ritz_top_k(t, k, tol)
    return nodes, weights, top, error, converged, n * t.alphas[0]  # v^T H v, |v|^2 = n

  keys = jax.random.split(key, num_probes)
  nodes, weights, top, error, converged, quad = jax.lax.map(
      probe, keys, batch_size=min(probes_at_once or num_probes, num_probes))
  best = jnp.argmax(jnp.where(jnp.isnan(top), -jnp.inf, top), 0)  # (k,)
  pick = lambda x: jnp.take_along_axis(x, best[None], 0)[0]
  nan = jnp.all(jnp.isnan(top), 0)  # a probe whose Krylov space held < k directions
  stderr = jnp.std(quad, ddof=1) / jnp.sqrt(num_probes) if num_probes > 1 else \
      jnp.full((), jnp.nan, quad.dtype)
  return HessianSpectrum(nodes, weights, jnp.where(nan, jnp.nan, pick(top)),
                         jnp.where(nan, jnp.nan, pick(error)), pick(converged) & ~nan,
                         jnp.mean(quad), stderr)


def spectral_density(spectrum: HessianSpectrum, grid: jax.Array, sigma) -> jax.Array:
  """The Gaussian-broadened eigenvalue density of an SLQ estimate on
  ``grid`` (any shape): the mean over probes of sum_j w_j N(x; theta_j,
  sigma^2), a probability density (it integrates to 1 over the real line;
  times n, the number of parameters, for eigenvalues per unit). Broadening
  ``sigma`` of about (range of the nodes) / (several times steps) smooths the
  nodes' discreteness without hiding outliers (Ghorbani et al. 2019, sec. 2).
  NaN where the spectrum is non-finite.

  Raises:
    ValueError: sigma not positive (when a Python number).
  """
  if isinstance(sigma, (int, float)) and not sigma > 0:
    raise ValueError(f"expected sigma > 0, got {sigma!r}")
  grid = jnp.asarray(grid)
  lift = lambda a: a.reshape((1,) * grid.ndim + a.shape)
  z = (grid[..., None, None] - lift(spectrum.nodes)) / sigma  # (*grid, probes, steps)
  kernel = jnp.exp(-0.5 * z**2) / (sigma * jnp.sqrt(2 * jnp.pi).astype(z.dtype))
  return jnp.mean(jnp.sum(lift(spectrum.weights) * kernel, -1), -1)
