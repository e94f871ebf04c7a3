"""Mean-field theory of deep random networks, beside every measurement.

Composite Gauss-Legendre quadrature (float64) of the activation registry's
functions, accurate at any variance. Conventions: W ~ N(0, sigma_w^2 / fan_in) (or sigma_w times an
orthogonal matrix), b ~ N(0, sigma_b^2); q is the variance of a pre-activation.

References:
  Poole et al. 2016, Exponential expressivity in deep neural networks through
    transient chaos, https://arxiv.org/abs/1606.05340
  Schoenholz et al. 2017, Deep information propagation,
    https://arxiv.org/abs/1611.01232
  Pennington, Schoenholz & Ganguli 2017, Resurrecting the sigmoid in deep
    learning through dynamical isometry, https://arxiv.org/abs/1711.04735
  Pennington, Schoenholz & Ganguli 2018, The emergence of spectral
    universality in deep networks, https://arxiv.org/abs/1802.09979
  Pascanu, Mikolov & Bengio 2013, On the difficulty of training recurrent
    neural networks, https://arxiv.org/abs/1211.5063
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax.models import _activations

_Z_MAX = 12.0  # normal mass beyond 12 sigma: 4e-33
_PANEL_NODES = 16
_PAIR_NODES = 10  # per panel and axis of the 2-D (correlation) rules
_GAUSS_BREAKS = np.array([0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0])
# where activations change shape: the kinks at 0 and, for the smooth ones,
# features at scale 1 (tanh saturating, the GELU dip); geometric, so both a
# narrow and a wide Gaussian resolve them
_FEATURES = np.concatenate([[0.0], 2.0 ** np.arange(-5, 8), -(2.0 ** np.arange(-5, 8))])
_MAX_Q = 1e200  # a fixed point above this counts as divergent


def _rule(center, scale, nodes=_PANEL_NODES):
  """z nodes and weights with sum(w g(z)) = E[g(z)], z ~ N(0, 1), accurate for
  g(z) = f(center + scale z) with f an activation (or a product of them).

  Composite Gauss-Legendre on [-12, 12], split at fixed points of the normal
  density and at the z where ``center + scale z`` crosses 0 or +-2^k: each
  panel then spans at most a factor 2 of either scale, so the error is at
  rounding level for every variance from 1e-8 to 1e200 (the tests check this
  against adaptive quadrature), where a fixed Gauss-Hermite rule loses
  percents once the activation's features are narrower than its nodes.
  """
  scale = jnp.maximum(scale, 1e-300)
  feat = jnp.clip((_FEATURES - center) / scale, -_Z_MAX, _Z_MAX)
  pts = jnp.sort(jnp.concatenate([jnp.asarray([-_Z_MAX, 0.0, _Z_MAX]), _GAUSS_BREAKS,
                                  -_GAUSS_BREAKS, feat]))
  x, w = np.polynomial.legendre.leggauss(nodes)
  a, b = pts[:-1, None], pts[1:, None]
  x, w = x[None], w[None]
  z = (0.5 * (a + b) + 0.5 * (b - a) * x).ravel()
  w = (0.5 * (b - a) * w).ravel() * jnp.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
  return z, w


def _act(name, **kw):
  return _activations.get_activation(name, **kw)


def _in_x64(fn):
  """Runs ``fn`` with 64-bit JAX enabled and returns host floats."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with jax.enable_x64(True):
      out = fn(*args, **kwargs)
      return jax.tree.map(lambda v: float(v) if np.ndim(v) == 0 else np.asarray(v), out)
  return wrapper


@functools.partial(jax.jit, static_argnums=0)
def _moments_at(act, q):
  """(E[phi^2], E[phi'^2], E[phi'^4], E[phi'' phi]) at variance q."""
  s = jnp.sqrt(jnp.maximum(q, 1e-300))  # q = 0: the limit q -> 0+ (ReLU's E[phi'^2] = 1/2)
  z, w = _rule(0.0, s)
  u = s * z
  f, d = act.fn(u, None), act.derivative(u, None)
  dd = jax.vmap(jax.grad(lambda t: act.derivative(t, None)))(u)
  return jnp.sum(w * f * f), jnp.sum(w * d * d), jnp.sum(w * d**4), jnp.sum(w * dd * f)


@functools.cache
def _slopes_at_infinity(act) -> tuple[float, float]:
  """phi'(+inf), phi'(-inf): the limits that set chi_1 when q* is infinite."""
  with jax.enable_x64(True):
    d = act.derivative(jnp.asarray([1e8, -1e8], jnp.float64), None)
    return float(d[0]), float(d[1])


@functools.partial(jax.jit, static_argnums=0)
def _q_star_jit(act, sigma_w, sigma_b, q0):
  """The fixed point that iterating the length map from q0 reaches, solved
  directly: the map is increasing in q, so the iterates move monotonically
  toward the nearest root of g(q) = length(q) - q in the direction of g(q0).
  That root is bracketed by doubling (or halving) q (x100 above 1e4), then bisected in log q;
  no bracket up to 1e200 means divergence (inf), none down to 1e-200 means
  the iterates decay to 0. Upward, length(q) within 1e-12 q of q counts as
  no root (rounding), so a fixed point whose approach is slower than that
  (beyond ~1e12 sigma_b^2) is reported as divergent."""
  g = lambda q: sigma_w**2 * _moments_at(act, q)[0] + sigma_b**2 - q
  q0 = jnp.maximum(q0, 1e-200)
  fixed = jnp.abs(g(q0)) <= 1e-12 * q0  # q0 is a fixed point (the identity at sigma_w = 1)
  up = g(q0) > 0
  factor = jnp.where(up, 2.0, 0.5)

  def searching(state):
    q, _ = state
    # upward, a fixed point must be clearly below the line (not rounding:
    # at slope 1 - 1e-16, a ReLU at sigma_w = sqrt(2) in floating point, it is
    # not one)
    return (jnp.where(up, g(q) > -1e-12 * q, g(q) < 0)) & (q < _MAX_Q) & (q > 1e-200)

  def step(state):  # beyond 1e4, where length(q) is linear in q for unbounded
    q, _ = state     # activations (one root at most), in steps of 100
    return q * jnp.where(up & (q > 1e4), 100.0, factor), q

  q, prev = jax.lax.while_loop(searching, step, (q0, q0))
  lo, hi = jnp.minimum(q, prev), jnp.maximum(q, prev)

  def bisect(_, bounds):
    lo, hi = bounds
    mid = jnp.sqrt(lo * hi)
    below = g(mid) > 0  # the root lies above mid
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  lo, hi = jax.lax.fori_loop(0, 64, bisect, (lo, hi))
  root = jnp.sqrt(lo * hi)
  root = jnp.where(fixed, q0, root)
  return jnp.where(fixed, q0, jnp.where(q >= _MAX_Q, jnp.inf, jnp.where(q <= 1e-200, 0.0, root)))


@functools.partial(jax.jit, static_argnums=0)
def _pair_means(act, q, c):
  """(E[phi(u1) phi(u2)], E[phi'(u1) phi'(u2)]) for unit pairs with variance q
  and correlation c: u1 = sqrt(q) z1, u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z2);
  the rule for z2 is rebuilt around each z1 node (the kink of phi(u2) moves
  with z1)."""
  s = jnp.sqrt(q)
  rho = jnp.sqrt(jnp.maximum(1 - c * c, 0.0))
  z1, w1 = _rule(0.0, s, _PAIR_NODES)

  def inner(a):
    z2, w2 = _rule(s * c * a, s * rho, _PAIR_NODES)
    u2 = s * (c * a + rho * z2)
    return jnp.sum(w2 * act.fn(u2, None)), jnp.sum(w2 * act.derivative(u2, None))

  f2, d2 = jax.vmap(inner)(z1)
  u1 = s * z1
  return jnp.sum(w1 * act.fn(u1, None) * f2), jnp.sum(w1 * act.derivative(u1, None) * d2)


def _check_sigmas(sigma_w, sigma_b):
  if not (math.isfinite(sigma_w) and sigma_w > 0):
    raise ValueError(f"expected sigma_w > 0, got {sigma_w}")
  if not (math.isfinite(sigma_b) and sigma_b >= 0):
    raise ValueError(f"expected sigma_b >= 0, got {sigma_b}")


def gaussian_mean(fn, q: float) -> float:
  """E_z[fn(sqrt(q) z)], z ~ N(0, 1), for a NumPy-vectorized ``fn`` whose
  features (kinks, saturation) lie at 0 or at scale 1."""
  with jax.enable_x64(True):
    z, w = (np.asarray(a) for a in _rule(0.0, math.sqrt(max(q, 0.0))))
  return float(np.sum(w * fn(math.sqrt(max(q, 0.0)) * z)))


@_in_x64
def length_map(activation: str, sigma_w: float, sigma_b: float, q: float, **kw) -> float:
  """q_l = sigma_w^2 E[phi(sqrt(q_(l-1)) z)^2] + sigma_b^2 (Poole et al. eq. 3)."""
  return sigma_w**2 * _moments_at(_act(activation, **kw), q)[0] + sigma_b**2


@_in_x64
def q_star(activation: str, sigma_w: float, sigma_b: float, q0: float = 1.0, **kw) -> float:
  """Fixed point q* of the length map, iterated from ``q0``: the variance every
  pre-activation settles to in a deep random network.

  Solved directly (no iteration cap, so fixed points near the divergence,
  where iterates crawl, are exact). Returns ``inf`` when q grows without
  bound (unbounded activations with sigma_w^2 (phi'(+inf)^2 + phi'(-inf)^2) / 2
  >= 1 and, at equality, sigma_b > 0 or a positive drift: ReLU with
  sigma_w^2 >= 2 and sigma_b > 0, the identity with sigma_w >= 1), and 0 when
  it decays to 0 (e.g. tanh with sigma_w <= 1, sigma_b = 0).
  """
  _check_sigmas(sigma_w, sigma_b)
  return _q_star_jit(_act(activation, **kw), float(sigma_w), float(sigma_b), float(q0))


@_in_x64
def derivative_moment(activation: str, q: float, power: int = 2, **kw) -> float:
  """E[phi'(sqrt(q) z)^power] for power 2 (mu_1) or 4 (mu_2, Pennington et al.).
  At q = inf, its limit (phi'(+inf)^power + phi'(-inf)^power) / 2."""
  if power not in (2, 4):
    raise ValueError(f"expected power 2 or 4, got {power}")
  act = _act(activation, **kw)
  if math.isinf(q):
    hi, lo = _slopes_at_infinity(act)
    return 0.5 * (hi**power + lo**power)
  m = _moments_at(act, q)
  return m[1] if power == 2 else m[2]


def chi1(activation: str, sigma_w: float, sigma_b: float, q: float | None = None, **kw) -> float:
  """chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]: the factor by which the mean squared
  gradient (and the mean squared singular value of a layer Jacobian) changes
  per layer. < 1 ordered (vanishing), > 1 chaotic (exploding), = 1 critical.
  ReLU: sigma_w^2 / 2 for any q. Where q* is infinite (unbounded activations
  past the divergence) it is the limit sigma_w^2 (phi'(+inf)^2 + phi'(-inf)^2) / 2,
  e.g. sigma_w^2 / 2 for softplus, GELU and SiLU."""
  q = q_star(activation, sigma_w, sigma_b, **kw) if q is None else q
  return sigma_w**2 * derivative_moment(activation, q, 2, **kw)


@_in_x64
def correlation_map(activation: str, sigma_w: float, sigma_b: float, c: float,
                    q: float | None = None, **kw) -> float:
  """c_l = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q* for inputs with
  correlation c_(l-1) (Poole et al. eq. 5)."""
  q = q_star(activation, sigma_w, sigma_b, **kw) if q is None else q
  e, _ = _pair_means(_act(activation, **kw), q, c)
  return (sigma_w**2 * e + sigma_b**2) / q


@functools.partial(jax.jit, static_argnums=0)
def _c_star_jit(act, sigma_w, sigma_b, q):
  """The fixed point that iterating the correlation map from c = 0.5 reaches.
  The map is increasing in c with c = 1 fixed, so the iterates move
  monotonically toward the nearest root of h(c) = map(c) - c: scanned on a
  grid that is geometric toward 1, then bisected."""
  h = lambda c: (sigma_w**2 * _pair_means(act, q, c)[0] + sigma_b**2) / q - c
  c0 = 0.5
  up = h(c0) >= 0
  grid = jnp.where(up, 1.0 - 0.5 * jnp.geomspace(1.0, 1e-9, 40), jnp.linspace(0.5, -1.0, 40))
  hs = jax.lax.map(h, grid)
  crossed = jnp.where(up, hs < 0, hs >= 0)
  k = jnp.argmax(crossed)
  found = jnp.any(crossed)
  a = jnp.where(k == 0, c0, grid[jnp.maximum(k - 1, 0)])
  b = grid[k]
  lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)

  def bisect(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    above = h(mid) >= 0  # the root lies above mid
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, 40, bisect, (lo, hi))
  return jnp.where(found, 0.5 * (lo + hi), jnp.where(up, 1.0, -1.0))


def c_star(activation: str, sigma_w: float, sigma_b: float, **kw) -> float:
  """Stable fixed point of the correlation map: 1 in the ordered phase, < 1 in
  the chaotic one (the one reached from c = 0.5, solved directly). 1 when q*
  is 0 (every signal shrinks to the same point) or infinite (the bias becomes
  negligible and inputs align, as for ReLU)."""
  q = q_star(activation, sigma_w, sigma_b, **kw)
  if not math.isfinite(q) or q <= 0:
    return 1.0
  with jax.enable_x64(True):
    return float(_c_star_jit(_act(activation, **kw), float(sigma_w), float(sigma_b), q))


@_in_x64
def _chi_c(activation, sigma_w, c, q, **kw):
  return sigma_w**2 * _pair_means(_act(activation, **kw), q, c)[1]


@_in_x64
def _chi_q(activation, sigma_w, q, **kw):
  m = _moments_at(_act(activation, **kw), q)
  return sigma_w**2 * (m[1] + m[3])


def depth_scales(activation: str, sigma_w: float, sigma_b: float, **kw) -> tuple[float, float]:
  """(xi_q, xi_c): depths over which the length and the correlation of signals
  converge to their fixed points (Schoenholz et al. eqs. 7 and 9). xi_c
  diverges at the order-to-chaos transition: there, and only there, signals
  (and gradients) travel through arbitrarily deep networks. Both are
  infinite when q* is (the length never settles)."""
  q = q_star(activation, sigma_w, sigma_b, **kw)
  if math.isinf(q):
    return math.inf, math.inf
  c = c_star(activation, sigma_w, sigma_b, **kw)
  xi = lambda chi: math.inf if chi >= 1 or chi <= 0 else -1.0 / math.log(chi)
  return xi(_chi_q(activation, sigma_w, q, **kw)), xi(_chi_c(activation, sigma_w, c, q, **kw))


def critical_sigma_w(activation: str, sigma_b: float, lo: float = 0.05, hi: float = 20.0,
                     tol: float = 1e-6, **kw) -> float:
  """The smallest sigma_w in [lo, hi] on the order-to-chaos line: chi_1(sigma_w,
  sigma_b) = 1 with chi_1 continuous there (a scan of 96 log-spaced points,
  then bisection of each sign change, checked).

  A sign change is not always a crossing: where q* jumps (GELU at sigma_b = 0
  jumps from q* = 0 to q* = inf) chi_1 jumps over 1 without taking the
  value; such points are refused, not returned.

  Raises:
    ValueError: when chi_1 does not equal 1 (to ``tol``) anywhere in [lo, hi],
      with the reason (no sign change, or only jumps across 1).
  """
  _check_sigmas(lo, sigma_b)
  f = lambda s: chi1(activation, s, sigma_b, **kw) - 1.0
  grid = np.geomspace(lo, hi, 96)
  values = [f(s) for s in grid]
  jumps = []
  for a, b, fa, fb in zip(grid[:-1], grid[1:], values[:-1], values[1:]):
    if fa == 0:
      return float(a)
    if fa * fb > 0 or not (math.isfinite(fa) and math.isfinite(fb)):
      continue
    while b - a > 4 * np.finfo(float).eps * b:  # bisection to float resolution (~40 steps)
      mid = math.sqrt(a * b)
      fm = f(mid)
      if fm == 0:
        a = b = mid
        break
      a, fa, b, fb = (mid, fm, b, fb) if fm * fa > 0 else (a, fa, mid, fm)
    mid = math.sqrt(a * b)
    if abs(f(mid)) <= tol and abs(fa) <= 10 * tol and abs(fb) <= 10 * tol:
      return float(mid)
    jumps.append((mid, fa + 1.0, fb + 1.0))
  if jumps:
    s, ca, cb = jumps[0]
    raise ValueError(f"chi_1 does not equal 1 for sigma_w in [{lo}, {hi}] ({activation}, "
                     f"sigma_b={sigma_b}): it jumps from {ca:.3g} to {cb:.3g} at sigma_w="
                     f"{s:.6g}, where the fixed point q* jumps (q* = "
                     f"{q_star(activation, s * (1 - 1e-9), sigma_b, **kw):.3g} below, "
                     f"{q_star(activation, s * (1 + 1e-9), sigma_b, **kw):.3g} above)")
  raise ValueError(f"expected chi_1 - 1 to change sign for sigma_w in [{lo}, {hi}] "
                   f"({activation}, sigma_b={sigma_b}), got {values[0]:.3g} and "
                   f"{values[-1]:.3g} at the ends")


def gradient_growth(activation: str, sigma_w: float, sigma_b: float, depth: int, **kw) -> np.ndarray:
  """Predicted ||dL/dh_l||^2 / ||dL/dh_L||^2 for l = 0..depth: chi_1^(depth - l)."""
  c = chi1(activation, sigma_w, sigma_b, **kw)
  return c ** np.arange(depth, -1, -1, dtype=np.float64)


def jacobian_sq_singular_moments(activation: str, sigma_w: float, sigma_b: float, depth,
                                 weights: str = "gaussian", **kw):
  """Mean and variance of the squared singular values of the input-output
  Jacobian of a depth-L network at the fixed point (Pennington et al. 2017):

    m1 = (sigma_w^2 mu1)^L,   var = m1^2 L (mu2 / mu1^2 - 1 - s1),

  with mu_k = E[phi'(sqrt(q*) z)^(2k)] and s1 = -1 for Gaussian weights, 0 for
  orthogonal ones. Linear orthogonal networks with sigma_w = 1: m1 = 1, var = 0
  (every singular value is exactly 1).

  Returns:
    (m1, var) as arrays over ``depth`` (an int or an array of depths).
  """
  if weights not in ("gaussian", "orthogonal"):
    raise ValueError(f"expected weights 'gaussian' or 'orthogonal', got {weights!r}")
  q = q_star(activation, sigma_w, sigma_b, **kw)
  mu1 = derivative_moment(activation, q, 2, **kw)
  mu2 = derivative_moment(activation, q, 4, **kw)
  s1 = -1.0 if weights == "gaussian" else 0.0
  L = np.asarray(depth, np.float64)
  m1 = (sigma_w**2 * mu1) ** L
  return m1, m1**2 * L * max(mu2 / mu1**2 - 1.0 - s1, 0.0)


def pascanu_bound(activation: str, weight_norm: float, steps) -> np.ndarray:
  """(gamma ||W||)^(T - t): the upper bound on ||dh_T/dh_t|| of a vanilla RNN,
  gamma = max|phi'| (1 for tanh, 1/4 for sigmoid) (Pascanu et al. 2013)."""
  gamma = _act(activation).max_derivative
  return (gamma * weight_norm) ** np.asarray(steps, np.float64)


@_in_x64
def _q_trajectory(act, sigma_w, sigma_b, q0, depth):
  """(q_l, chi_l) for l = 1..depth, one quadrature per layer inside the scan
  (memory O(depth), not O(depth x quadrature nodes))."""
  def step(q, _):
    moments = _moments_at(act, q)
    return sigma_w**2 * moments[0] + sigma_b**2, (q, sigma_w**2 * moments[1])
  _, (qs, chis) = jax.lax.scan(step, jnp.asarray(q0, jnp.float64), None, length=depth)
  return qs, chis


def mean_sq_singular_value_by_depth(activation: str, sigma_w: float, sigma_b: float,
                                    depth: int, q0: float | None = None, **kw) -> np.ndarray:
  """Predicted mean squared singular value of dh_l/dx for l = 1..depth.

  Follows the pre-activation variance from the input (``q0``; q* when
  ``None``) through the length map and multiplies the per-layer factors
  sigma_w^2 E[phi'(sqrt(q_l) z)^2], so the transient before q* is included.
  At q* this is chi_1^l.
  """
  _check_sigmas(sigma_w, sigma_b)
  act = _act(activation, **kw)
  q0 = q_star(activation, sigma_w, sigma_b, **kw) if q0 is None else q0
  qs, chis = _q_trajectory(act, float(sigma_w), float(sigma_b), float(q0), int(depth))
  with np.errstate(over="ignore", invalid="ignore"):  # beyond float range: inf, quietly
    return np.cumprod(np.asarray(chis))


def pre_activation_variance_by_depth(activation: str, sigma_w: float, sigma_b: float,
                                     depth: int, q0: float, **kw) -> np.ndarray:
  """q_l for l = 1..depth from q_1 = ``q0`` (the length map iterated)."""
  qs, _ = _q_trajectory(_act(activation, **kw), float(sigma_w), float(sigma_b), float(q0),
                        int(depth))
  return np.asarray(qs)
