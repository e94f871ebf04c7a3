"""gf.theory against an independent mean-field implementation written here:
the activations in NumPy/SciPy, Gaussian expectations by the trapezoid rule on
a logarithmic grid (u = +-e^t, which resolves features at scale 1 and a
Gaussian of any width alike), 2-D expectations by Simpson's rule split at the
kink, fixed points by Brent's method. Nothing here calls gf.theory's
quadrature."""

import math

import numpy as np
import pytest
from scipy import optimize, special

from gradflow_jax import theory as th
from gradflow_jax.models._activations import ACTIVATIONS

SQ2PI = math.sqrt(2 * math.pi)
SELU_L, SELU_A = 1.0507009873554805, 1.6732632423543772
K = math.sqrt(2 / math.pi)


def _elu(u, a, scale=1.0):
  neg = a * np.expm1(np.minimum(u, 0))
  return scale * np.where(u > 0, u, neg), scale * np.where(u > 0, 1.0, a * np.exp(np.minimum(u, 0)))


def _gelu_tanh(u):
  t = np.tanh(K * (u + 0.044715 * u**3))
  return 0.5 * u * (1 + t), 0.5 * (1 + t) + 0.5 * u * (1 - t * t) * K * (1 + 3 * 0.044715 * u * u)


def _leaky(a):
  return lambda u: (np.where(u > 0, u, a * u), np.where(u > 0, 1.0, a))


REF = {  # name -> (u -> (phi, phi')), (phi'(+inf), phi'(-inf)) or None when bounded
    "identity": (lambda u: (u, np.ones_like(u)), (1.0, 1.0)),
    "sigmoid": (lambda u: (special.expit(u), special.expit(u) * special.expit(-u)), None),
    "tanh": (lambda u: (np.tanh(u), 1 - np.tanh(u) ** 2), None),
    "relu": (_leaky(0.0), (1.0, 0.0)),
    "leaky_relu": (_leaky(0.01), (1.0, 0.01)),
    "prelu": (_leaky(0.25), (1.0, 0.25)),
    "elu": (lambda u: _elu(u, 1.0), (1.0, 0.0)),
    "selu": (lambda u: _elu(u, SELU_A, SELU_L), (SELU_L, 0.0)),
    "gelu": (lambda u: (u * special.ndtr(u), special.ndtr(u) + u * np.exp(-u * u / 2) / SQ2PI),
             (1.0, 0.0)),
    "gelu_tanh": (_gelu_tanh, (1.0, 0.0)),
    "silu": (lambda u: (u * special.expit(u),
                        special.expit(u) * (1 + u * special.expit(-u))), (1.0, 0.0)),
    "softplus": (lambda u: (np.logaddexp(0, u), special.expit(u)), (1.0, 0.0)),
}


def phi(name, u):
  return REF[name][0](u)[0]


def dphi(name, u):
  return REF[name][0](u)[1]


def ddphi(name, u):
  h = 1e-5 * np.maximum(1.0, np.abs(u))
  return (dphi(name, u + h) - dphi(name, u - h)) / (2 * h)


def expect(f, q):
  """E[f(sqrt(q) z)]: trapezoid in t on each half-line u = +-e^t."""
  s = math.sqrt(max(q, 1e-300))
  t = np.linspace(math.log(1e-10 * min(1.0, s)), math.log(13 * s), 6001)
  u = np.exp(t)
  p = np.exp(-0.5 * (u / s) ** 2) / (SQ2PI * s) * u
  return np.trapezoid((f(u) + f(-u)) * p, t)


def pair_expect(f, g, q, c):
  """E[f(u1) g(u2)], u1 = sqrt(q) z1, u2 = sqrt(q)(c z1 + rho z2): outer on the
  log grid, inner (over z2) by Simpson on each side of g's kink at u2 = 0."""
  s = math.sqrt(q)
  rho = math.sqrt(max(1 - c * c, 0.0))
  t = np.linspace(math.log(1e-8 * min(1.0, s)), math.log(13 * s), 601)
  u1 = np.concatenate([np.exp(t), -np.exp(t)])[:, None]
  p = (np.exp(-0.5 * (u1 / s) ** 2) / (SQ2PI * s) * np.abs(u1))[:, 0]
  kink = np.clip(-c * u1 / (s * rho), -13, 13)
  x = np.linspace(0.0, 1.0, 401)[None]
  inner = 0.0
  for a, b in ((-13.0, kink), (kink, 13.0)):
    w = a + (b - a) * x
    vals = g(c * u1 + s * rho * w) * np.exp(-0.5 * w * w) / SQ2PI
    inner = inner + (b - a)[:, 0] * _simpson(vals)
  vals = f(u1[:, 0]) * inner * p
  n = t.size
  return np.trapezoid(vals[:n], t) + np.trapezoid(vals[n:], t)


def _simpson(v):  # Simpson weights on [0, 1], odd count along the last axis
  n = v.shape[-1]
  w = np.ones(n)
  w[1:-1:2], w[2:-1:2] = 4, 2
  return v @ (w / (3 * (n - 1)))


def ref_q_star(name, sw, sb, q0=1.0):
  g = lambda q: sw**2 * expect(lambda u: phi(name, u) ** 2, q) + sb**2 - q
  g0 = g(q0)
  if abs(g0) <= 1e-12 * q0:
    return q0
  q, step = q0, (2.0 if g0 > 0 else 0.5)
  for _ in range(800):
    nxt = q * (100.0 if step > 1 and q > 1e4 else step)
    if (g0 > 0 and g(nxt) < -1e-9 * nxt) or (g0 < 0 and g(nxt) >= 0):
      return optimize.brentq(g, min(q, nxt), max(q, nxt), xtol=1e-300, rtol=1e-14)
    if nxt > 1e150:
      return math.inf
    if nxt < 1e-150:
      return 0.0
    q = nxt
  raise AssertionError("no bracket")


def ref_chi1(name, sw, q):
  if math.isinf(q):
    a, b = REF[name][1]
    return sw**2 * (a * a + b * b) / 2
  return sw**2 * expect(lambda u: dphi(name, u) ** 2, q)


def ref_corr(name, sw, sb, q, c):
  f = lambda u: phi(name, u)
  return (sw**2 * pair_expect(f, f, q, c) + sb**2) / q


def ref_c_star(name, sw, sb, q):
  h = lambda c: ref_corr(name, sw, sb, q, c) - c
  if h(0.5) >= 0:
    grid = 1 - 0.5 * np.geomspace(1.0, 1e-7, 12)
    for a, b in zip(grid[:-1], grid[1:]):
      if h(b) < 0:
        return optimize.brentq(h, a, b, xtol=1e-13)
    return 1.0
  grid = np.linspace(0.5, -1.0, 7)
  for a, b in zip(grid[:-1], grid[1:]):
    if h(b) >= 0:
      return optimize.brentq(h, b, a, xtol=1e-13)
  return -1.0


def xi(chi):
  return math.inf if chi >= 1 or chi <= 0 else -1 / math.log(chi)


def close(a, b, rel=1e-4, abs_=1e-12):
  if math.isinf(b) or math.isinf(a):
    return a == b
  return abs(a - b) <= rel * abs(b) + abs_


GRID = [(sw, sb) for sw in (0.5, 1.5, 3.0, 20.0) for sb in (0.0, 0.5, 2.0)]


def test_every_activation_has_a_reference():
  assert set(REF) == set(ACTIVATIONS) - {"swish"}


@pytest.mark.parametrize("name", sorted(REF))
def test_q_star_chi1_xi_q_over_the_grid(name):
  for sw, sb in GRID:
    q_ref = ref_q_star(name, sw, sb)
    q = th.q_star(name, sw, sb)
    assert close(q, q_ref), (name, sw, sb, q, q_ref)
    chi = th.chi1(name, sw, sb)
    assert math.isfinite(chi) and close(chi, ref_chi1(name, sw, q_ref)), (name, sw, sb, chi)
    if math.isfinite(q_ref):
      chi_q = sw**2 * (expect(lambda u: dphi(name, u) ** 2, q_ref)
                       + expect(lambda u: ddphi(name, u) * phi(name, u), q_ref))
      xi_q = th.depth_scales(name, sw, sb)[0] if (sw, sb) == (1.5, 0.5) else None
      if xi_q is not None:
        assert close(xi_q, xi(chi_q), rel=1e-3), (name, xi_q, xi(chi_q))


# q* and chi1 at large variance, where fixed Gauss-Hermite rules failed
@pytest.mark.parametrize("name", ["tanh", "gelu", "sigmoid", "silu", "elu"])
def test_derivative_moments_up_to_q_1e4(name):
  for q in (1e-6, 0.3, 4.0, 16.0, 300.0, 1e4):
    for power in (2, 4):
      ref = expect(lambda u: dphi(name, u) ** power, q)
      assert close(th.derivative_moment(name, q, power), ref, rel=1e-6), (name, q, power)


@pytest.mark.parametrize("name", sorted(REF))
def test_correlation_map_c_star_and_xi_c(name):
  for sw, sb in ((1.0, 0.5), (3.0, 0.5)):
    q = ref_q_star(name, sw, sb)
    if not math.isfinite(q):
      assert th.c_star(name, sw, sb) == 1.0 and th.depth_scales(name, sw, sb) == (math.inf,) * 2
      continue
    for c in (0.3,):
      assert close(th.correlation_map(name, sw, sb, c), ref_corr(name, sw, sb, q, c)), (name, c)
    c_ref = ref_c_star(name, sw, sb, q)
    c = th.c_star(name, sw, sb)
    assert abs(c - c_ref) <= 1e-4 * max(abs(c_ref), 1e-3), (name, sw, sb, c, c_ref)
    d = lambda u: dphi(name, u)
    chi_c = sw**2 * pair_expect(d, d, q, min(c_ref, 1 - 1e-12))
    assert close(th.depth_scales(name, sw, sb)[1], xi(chi_c), rel=1e-3), name


def test_known_failures_of_the_old_quadrature():
  assert th.chi1("tanh", 10.0, 0.1) == pytest.approx(ref_chi1("tanh", 10.0, ref_q_star("tanh", 10.0, 0.1)), rel=1e-6)
  assert th.chi1("tanh", 10.0, 0.1) == pytest.approx(5.545, abs=1e-3)  # Monte Carlo: 5.545
  assert th.q_star("relu", math.sqrt(2), 0.5) == math.inf
  assert th.q_star("identity", 1.0, 0.3) == math.inf
  # slow approach to a far fixed point: sigma_b^2 / (1 - sigma_w^2 / 2)
  assert th.q_star("relu", 1.41421, 0.5) == pytest.approx(0.25 / (1 - 1.41421**2 / 2), rel=1e-9)
  assert th.chi1("softplus", 1.5, 0.0) == pytest.approx(1.5**2 / 2, rel=1e-12)  # q* = inf


@pytest.mark.parametrize("name", sorted(REF))
def test_critical_sigma_w_is_a_crossing_or_raises(name):
  for sb in (0.0, 1.0):
    try:
      sw = th.critical_sigma_w(name, sb)
    except ValueError as e:
      # the reference sees no continuous crossing either: chi1 jumps over 1
      assert "jumps" in str(e) or "change sign" in str(e), e
      lo, hi = ref_chi1(name, 0.05, ref_q_star(name, 0.05, sb)), ref_chi1(
          name, 20.0, ref_q_star(name, 20.0, sb))
      if "jumps" in str(e):
        s = float(str(e).split("sigma_w=")[1].split(",")[0])
        below = ref_chi1(name, s * (1 - 1e-4), ref_q_star(name, s * (1 - 1e-4), sb))
        above = ref_chi1(name, s * (1 + 1e-4), ref_q_star(name, s * (1 + 1e-4), sb))
        assert below < 0.999 and above > 1.001, (name, sb, below, above)
      else:
        assert (lo - 1) * (hi - 1) > 0
      continue
    q = ref_q_star(name, sw, sb)
    assert close(ref_chi1(name, sw, q), 1.0, rel=1e-4), (name, sb, sw)
