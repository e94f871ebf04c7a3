"""Mean-field theory against closed forms and against simulation averaged over
seeds, with tolerances from finite-width theory."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow_jax as gf
from gradflow_jax import theory as th


@pytest.mark.parametrize("sigma_w, sigma_b", [(1.0, 0.0), (1.3, 0.5), (1.4, 0.1)])
def test_relu_closed_forms(sigma_w, sigma_b):
  assert th.chi1("relu", sigma_w, sigma_b) == pytest.approx(sigma_w**2 / 2, rel=1e-10)
  if sigma_b > 0:  # q* = sigma_b^2 / (1 - sigma_w^2 / 2)
    assert th.q_star("relu", sigma_w, sigma_b) == pytest.approx(
        sigma_b**2 / (1 - sigma_w**2 / 2), rel=1e-8)


def test_linear_closed_forms_and_unbounded_growth():
  assert th.q_star("identity", 0.8, 0.3) == pytest.approx(0.09 / (1 - 0.64), rel=1e-8)
  assert th.chi1("identity", 0.8, 0.3) == pytest.approx(0.64, rel=1e-12)
  assert th.q_star("relu", 2.0, 0.0) == math.inf


def test_relu_correlation_map_is_the_arccos_kernel():
  # Cho & Saul 2009: E[relu(u1) relu(u2)] = q / (2 pi) (sqrt(1 - c^2) + (pi - arccos c) c)
  sw, sb = 1.2, 0.4
  q = th.q_star("relu", sw, sb)
  for c in (0.0, 0.3, 0.9):
    e = q / (2 * math.pi) * (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c)
    assert th.correlation_map("relu", sw, sb, c) == pytest.approx((sw**2 * e + sb**2) / q, rel=1e-5)


def test_critical_line_and_depth_scales():
  assert th.critical_sigma_w("relu", 0.0) == pytest.approx(math.sqrt(2), rel=1e-9)
  sw = th.critical_sigma_w("tanh", 0.3)
  assert th.chi1("tanh", sw, 0.3) == pytest.approx(1.0, abs=1e-9)
  _, xi_c = th.depth_scales("tanh", sw * 0.999, 0.3)
  assert xi_c > 100  # diverges at the transition
  chi = th.chi1("tanh", 0.6, 0.3)  # ordered phase: c* = 1, xi_c = -1 / ln chi_1
  assert th.depth_scales("tanh", 0.6, 0.3)[1] == pytest.approx(-1 / math.log(chi), rel=1e-6)
  with pytest.raises(ValueError, match="change sign"):
    th.critical_sigma_w("tanh", 0.3, lo=5.0, hi=10.0)


def test_linear_moments_and_orthogonal_isometry():
  m1, var = th.jacobian_sq_singular_moments("identity", 1.0, 0.0, [1, 2, 4], weights="orthogonal")
  np.testing.assert_allclose(m1, 1.0)
  np.testing.assert_allclose(var, 0.0)
  _, var_g = th.jacobian_sq_singular_moments("identity", 1.0, 0.0, [1, 2, 4])
  np.testing.assert_allclose(var_g, [1, 2, 4])  # Fuss-Catalan moments of Wishart products


def test_gaussian_linear_variance_against_simulation():
  """Product of L Gaussian N x N matrices: var of squared singular values = L.
  Finite N adds L(L+1)/(2N) to it (L = 1: E tr(WW^T)^2 / N = 2 + 1/N)."""
  n, depth = 96, 3
  cfg = gf.MLPConfig(in_dim=n, width=n, depth=depth, out_dim=1, activation="identity",
                     init="gaussian", sigma_w=1.0)
  vals = [float(gf.jacobian_spectra(cfg, gf.init_mlp(jax.random.key(s), cfg), np.ones((1, n)),
                                    depths=[depth]).sq_singular_value_variance[0, 0])
          for s in range(4)]
  _, want = th.jacobian_sq_singular_moments("identity", 1.0, 0.0, depth)
  # the sample variance of N self-averaging eigenvalues fluctuates by O(L^2 / N)
  tol = depth * (depth + 1) / n + 4 * depth**2 / n / math.sqrt(len(vals))
  assert abs(np.mean(vals) - want) <= tol * want


def test_tanh_jacobian_mean_sq_singular_value_against_simulation():
  """m1 = chi_1^L at q*. Per network, m1-hat fluctuates with the per-layer mean
  of phi'^2 over N units (relative variance (mu2/mu1^2 - 1) / N per layer) and
  is biased by O(1/N) per layer; tolerance: L/N + 4 standard errors over S seeds."""
  n, depth, seeds, sw, sb = 128, 6, 6, 1.3, 0.3
  q = th.q_star("tanh", sw, sb)
  mu1, mu2 = th.derivative_moment("tanh", q, 2), th.derivative_moment("tanh", q, 4)
  cfg = gf.MLPConfig(in_dim=n, width=n, depth=depth, out_dim=1, activation="tanh",
                     init="gaussian", sigma_w=sw, sigma_b=sb)
  scale = math.sqrt((q - sb**2) / sw**2)  # inputs with |x|^2 / n = (q* - sb^2) / sw^2
  x = scale * np.asarray(jax.random.normal(jax.random.key(99), (4, n)))
  x *= scale * math.sqrt(n) / np.linalg.norm(x, axis=1, keepdims=True)
  m1 = [float(jnp.mean(gf.jacobian_spectra(cfg, gf.init_mlp(jax.random.key(s), cfg), x,
                                           depths=[depth]).mean_sq_singular_value))
        for s in range(seeds)]
  want = th.chi1("tanh", sw, sb) ** depth
  tol = depth / n + 4 * math.sqrt(depth * (mu2 / mu1**2 - 1) / (n * seeds))
  assert abs(np.mean(m1) / want - 1) <= tol


def test_q_star_against_simulation():
  """Mean of z^2 at layer 8 of a width-256 tanh net started at q*: the sample
  mean over N x B entries has relative std sqrt(2 / (N B)) (seeds average it
  further); finite width biases it by O(1/N)."""
  n, sw, sb = 256, 1.5, 0.2
  q = th.q_star("tanh", sw, sb)
  cfg = gf.MLPConfig(in_dim=n, width=n, depth=8, out_dim=1, activation="tanh", init="gaussian",
                     sigma_w=sw, sigma_b=sb)
  x = np.asarray(jax.random.normal(jax.random.key(3), (16, n))) * math.sqrt((q - sb**2) / sw**2)
  got = np.mean([float(jnp.mean(gf.models.mlp_forward(cfg, gf.init_mlp(jax.random.key(s), cfg), x)[1]
                                .pre[-1] ** 2)) for s in range(4)])
  # biases are shared by all examples: a second source, relative variance 2 sb^4 / (N q^2)
  se = math.sqrt(2 / (n * 16 * 4) + 2 * sb**4 / (n * 4 * q**2) + 2 / (n * 4))
  assert abs(got / q - 1) <= 4 * se + 1 / n


def test_pascanu_bound_and_gradient_growth():
  np.testing.assert_allclose(th.pascanu_bound("sigmoid", 2.0, [0, 1, 2]), [1, 0.5, 0.25])
  np.testing.assert_allclose(th.gradient_growth("relu", 1.0, 0.0, 2), [0.25, 0.5, 1.0])


def test_bad_sigma():
  with pytest.raises(ValueError, match="sigma_w > 0"):
    th.q_star("tanh", -1.0, 0.0)


def test_the_depth_trajectory_needs_memory_linear_in_depth_only():
  """The length map iterated to depth 10^5 holds O(depth) numbers, not one
  quadrature's nodes per layer (which asked 87 GB at depth 3e6)."""
  depth = 100_000
  trajectory = th._q_trajectory.__wrapped__  # the traced body, without its host conversion
  with jax.enable_x64(True):
    fn = jax.jit(lambda q0: trajectory(th._act("tanh"), 1.0, 0.0, q0, depth))
    mem = fn.lower(jnp.float64(1.0)).compile().memory_analysis()
  if mem is None:
    pytest.skip("this backend gives no memory analysis")
  assert mem.temp_size_in_bytes + mem.output_size_in_bytes <= 64 * depth
