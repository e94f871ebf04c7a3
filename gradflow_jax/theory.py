"""Mean-field theory of deep random networks, beside every measurement.

Gauss-Hermite quadrature (host, float64) of the activation registry's
functions. Conventions: W ~ N(0, sigma_w^2 / fan_in) (or sigma_w times an
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

from gradflow_jax import _activations

QUADRATURE_POINTS = 101
_KINKED = ("relu", "leaky_relu", "prelu", "elu", "selu")
_FIXED_POINT_ITERS = 5000
_FIXED_POINT_TOL = 1e-13


@functools.cache
def _nodes(kinked: bool) -> tuple[np.ndarray, np.ndarray]:
  """Nodes z and weights w with sum(w f(z)) = E[f(z)], z ~ N(0, 1).

  Gauss-Hermite (probabilists') for smooth activations. Activations with a
  kink at 0 (the ReLU and ELU families) would lose accuracy across the kink,
  so there each half-line [-12, 0] and [0, 12] gets its own Gauss-Legendre
  rule weighted by the normal density (mass beyond 12 sigma: 1e-33).
  """
  if not kinked:
    z, w = np.polynomial.hermite_e.hermegauss(QUADRATURE_POINTS)
    return z, w / math.sqrt(2.0 * math.pi)
  x, w = np.polynomial.legendre.leggauss(200)
  z = np.concatenate([6.0 * (x - 1.0), 6.0 * (x + 1.0)])
  w = np.concatenate([6.0 * w, 6.0 * w]) * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
  return z, w


def _act(name, **kw):
  return _activations.get_activation(name, **kw)


def _rule(act):
  z, w = _nodes(act.name in _KINKED)
  return jnp.asarray(z, jnp.float64), jnp.asarray(w, jnp.float64)


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
  z, w = _rule(act)
  u = jnp.sqrt(jnp.maximum(q, 0.0)) * z
  f, d = act.fn(u, None), act.derivative(u, None)
  dd = jax.vmap(jax.grad(lambda t: act.derivative(t, None)))(u)
  return jnp.sum(w * f * f), jnp.sum(w * d * d), jnp.sum(w * d**4), jnp.sum(w * dd * f)


@functools.partial(jax.jit, static_argnums=0)
def _q_star_jit(act, sigma_w, sigma_b, q0):
  def length(q):
    return sigma_w**2 * _moments_at(act, q)[0] + sigma_b**2

  def cond(state):
    i, q, prev = state
    return (i < _FIXED_POINT_ITERS) & (jnp.abs(q - prev) > _FIXED_POINT_TOL * jnp.maximum(1.0, q)) \
        & (q < 1e12) & jnp.isfinite(q)

  def body(state):
    i, q, _ = state
    return i + 1, length(q), q

  _, q, _ = jax.lax.while_loop(cond, body, (0, length(q0), q0))
  return jnp.where(jnp.isfinite(q) & (q < 1e12), q, jnp.inf)


@functools.partial(jax.jit, static_argnums=0)
def _pair_means(act, q, c):
  """(E[phi(u1) phi(u2)], E[phi'(u1) phi'(u2)]) for unit pairs with variance q
  and correlation c (a product rule over two independent normals)."""
  z, w = _rule(act)
  z1, z2 = z[:, None], z[None, :]
  u1 = jnp.sqrt(q) * z1
  u2 = jnp.sqrt(q) * (c * z1 + jnp.sqrt(jnp.maximum(1 - c * c, 0.0)) * z2)
  ww = w[:, None] * w[None, :]
  return (jnp.sum(ww * act.fn(u1, None) * act.fn(u2, None)),
          jnp.sum(ww * act.derivative(u1, None) * act.derivative(u2, None)))


def _check_sigmas(sigma_w, sigma_b):
  if not (math.isfinite(sigma_w) and sigma_w > 0):
    raise ValueError(f"expected sigma_w > 0, got {sigma_w}")
  if not (math.isfinite(sigma_b) and sigma_b >= 0):
    raise ValueError(f"expected sigma_b >= 0, got {sigma_b}")


def gaussian_mean(fn, q: float, kinked: bool = False) -> float:
  """E_z[fn(sqrt(q) z)], z ~ N(0, 1), for a NumPy-vectorized ``fn``."""
  z, w = _nodes(kinked)
  return float(np.sum(w * fn(math.sqrt(max(q, 0.0)) * z)))


@_in_x64
def length_map(activation: str, sigma_w: float, sigma_b: float, q: float, **kw) -> float:
  """q_l = sigma_w^2 E[phi(sqrt(q_(l-1)) z)^2] + sigma_b^2 (Poole et al. eq. 3)."""
  return sigma_w**2 * _moments_at(_act(activation, **kw), q)[0] + sigma_b**2


@_in_x64
def q_star(activation: str, sigma_w: float, sigma_b: float, q0: float = 1.0, **kw) -> float:
  """Fixed point q* of the length map, iterated from ``q0``: the variance every
  pre-activation settles to in a deep random network.

  Returns ``inf`` when q grows without bound (unbounded activations with
  sigma_w^2 E[phi'^2] > 1, e.g. ReLU with sigma_w^2 > 2).
  """
  _check_sigmas(sigma_w, sigma_b)
  return _q_star_jit(_act(activation, **kw), float(sigma_w), float(sigma_b), float(q0))


@_in_x64
def derivative_moment(activation: str, q: float, power: int = 2, **kw) -> float:
  """E[phi'(sqrt(q) z)^power] for power 2 (mu_1) or 4 (mu_2, Pennington et al.)."""
  if power not in (2, 4):
    raise ValueError(f"expected power 2 or 4, got {power}")
  m = _moments_at(_act(activation, **kw), q)
  return m[1] if power == 2 else m[2]


def chi1(activation: str, sigma_w: float, sigma_b: float, q: float | None = None, **kw) -> float:
  """chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]: the factor by which the mean squared
  gradient (and the mean squared singular value of a layer Jacobian) changes
  per layer. < 1 ordered (vanishing), > 1 chaotic (exploding), = 1 critical.
  ReLU: sigma_w^2 / 2 for any q."""
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


def c_star(activation: str, sigma_w: float, sigma_b: float, **kw) -> float:
  """Stable fixed point of the correlation map: 1 in the ordered phase, < 1 in
  the chaotic one (iterated from c = 0.5)."""
  q = q_star(activation, sigma_w, sigma_b, **kw)
  if not math.isfinite(q) or q <= 0:
    return 1.0
  c = 0.5
  for _ in range(500):
    new = min(correlation_map(activation, sigma_w, sigma_b, c, q, **kw), 1.0)
    if abs(new - c) < 1e-10:
      return new
    c = new
  return c


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
  (and gradients) travel through arbitrarily deep networks."""
  q = q_star(activation, sigma_w, sigma_b, **kw)
  c = c_star(activation, sigma_w, sigma_b, **kw)
  xi = lambda chi: math.inf if chi >= 1 or chi <= 0 else -1.0 / math.log(chi)
  return xi(_chi_q(activation, sigma_w, q, **kw)), xi(_chi_c(activation, sigma_w, c, q, **kw))


def critical_sigma_w(activation: str, sigma_b: float, lo: float = 1e-3, hi: float = 20.0,
                     **kw) -> float:
  """sigma_w on the order-to-chaos line: chi_1(sigma_w, sigma_b) = 1, by bisection.

  Raises:
    ValueError: when chi_1 does not cross 1 in [lo, hi].
  """
  f = lambda s: chi1(activation, s, sigma_b, **kw) - 1.0
  flo, fhi = f(lo), f(hi)
  if flo * fhi > 0:
    raise ValueError(f"expected chi_1 - 1 to change sign for sigma_w in [{lo}, {hi}] "
                     f"({activation}, sigma_b={sigma_b}), got {flo:.3g} and {fhi:.3g}")
  for _ in range(100):
    mid = 0.5 * (lo + hi)
    if f(mid) * flo > 0:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


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
  def step(q, _):
    new = sigma_w**2 * _moments_at(act, q)[0] + sigma_b**2
    return new, q
  _, qs = jax.lax.scan(step, jnp.asarray(q0, jnp.float64), None, length=depth)
  chis = jax.vmap(lambda q: sigma_w**2 * _moments_at(act, q)[1])(qs)
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
  return np.cumprod(np.asarray(chis))


def pre_activation_variance_by_depth(activation: str, sigma_w: float, sigma_b: float,
                                     depth: int, q0: float, **kw) -> np.ndarray:
  """q_l for l = 1..depth from q_1 = ``q0`` (the length map iterated)."""
  qs, _ = _q_trajectory(_act(activation, **kw), float(sigma_w), float(sigma_b), float(q0),
                        int(depth))
  return np.asarray(qs)
