"""Gradient noise scale estimators against the population they sample: a
linear regression of 128 examples whose per-example gradients NumPy computes
in closed form. Batches are i.i.d. draws (with replacement) from it, as the
estimators assume; the means over thousands of draws must land within 4
standard errors (computed from the draws themselves) of the population's
|G|^2 and tr(Sigma)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow_jax as gf
from helpers import tol

M = gf.measure
N, DRAWS, BATCH, MICRO = 128, 4096, 32, 4


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, 5)) * np.array([1.0, 2.0, 0.5, 1.0, 3.0])
  y = x @ rng.normal(size=(5, 2)) + rng.normal(size=(N, 2))
  params = {"w": rng.normal(size=(5, 2)) * 0.5, "b": np.array([0.3, -0.2])}
  return x, y, params


def loss(params, batch):
  x, y = batch
  return 0.5 * jnp.mean(jnp.sum((x @ params["w"] + params["b"][None] - y) ** 2, -1))


def per_example_numpy(x, y, params):
  """Closed form per-example gradients of 0.5 |x w + b - y|^2, leaves in
  ``jax.tree.leaves`` order (b, w)."""
  r = x @ params["w"] + params["b"] - y
  return [r, x[:, :, None] * r[:, None, :]]


def population(x, y, params):
  """(|G|^2, tr(Sigma)) per leaf over the 128 examples as the population
  (Sigma its covariance, ddof=0: what i.i.d. draws from it have)."""
  grads = per_example_numpy(x, y, params)
  g2 = np.array([np.sum(g.mean(0) ** 2) for g in grads])
  trace = np.array([np.sum(g.var(0)) for g in grads])
  return g2, trace


def _cast(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


def _estimate(batch, params):
  """Both estimators on one batch of ``BATCH`` (per-example: its first 8)."""
  micro = M.noise_scale_from_microbatches(jax.grad(loss), params, batch, MICRO)
  x, y = batch
  small = (x[: BATCH // MICRO], y[: BATCH // MICRO])
  per = jax.vmap(jax.grad(loss), (None, 0))(params, jax.tree.map(lambda a: a[:, None], small))
  return micro, M.noise_scale_from_per_example(per)


def _draws():
  x, y, params = _data()
  index = np.random.default_rng(1).integers(0, N, size=(DRAWS, BATCH))
  micro, per = jax.jit(jax.vmap(_estimate, (0, None)))(_cast((x[index], y[index])), _cast(params))
  return population(x, y, params), micro, per


def _within_4_standard_errors(draws, want):
  draws = np.asarray(draws, np.float64)
  mean, se = draws.mean(0), draws.std(0, ddof=1) / np.sqrt(len(draws))
  assert np.all(np.abs(mean - want) <= 4 * se), (mean, want, se)
  return se


def test_microbatch_and_per_example_estimators_are_unbiased():
  """Both estimators' means over 4096 draws (B = 32 in 4 micro-batches of
  8; per-example on B = 8) match the population per leaf and in total; the
  draws resolve the trace to 2% (relative standard error), so a bias of 1/8
  (ddof=0 on B = 8, a micro-batch size off by one) would fail."""
  (g2, trace), micro, per = _draws()
  for est in (micro, per):
    _within_4_standard_errors(est.leaf_grad_sq, g2)
    se = _within_4_standard_errors(est.leaf_trace, trace)
    _within_4_standard_errors(est.grad_sq, g2.sum())
    _within_4_standard_errors(est.trace, trace.sum())
    np.testing.assert_allclose(est.grad_sq, np.sum(est.leaf_grad_sq, -1), rtol=1e-5)
    np.testing.assert_allclose(est.b_simple, est.trace / est.grad_sq, rtol=1e-6)
    np.testing.assert_allclose(est.leaf_b_simple, est.leaf_trace / est.leaf_grad_sq, rtol=1e-6)
    assert np.all(se < 0.02 * trace)


def test_per_example_estimator_equals_numpy_on_the_whole_dataset():
  x, y, params = _data()
  grads = per_example_numpy(x, y, params)
  est = M.noise_scale_from_per_example(_cast({"b": grads[0], "w": grads[1]}))
  trace = np.array([np.sum(g.var(0, ddof=1)) for g in grads])
  g2 = np.array([np.sum(g.mean(0) ** 2) for g in grads]) - trace / N
  np.testing.assert_allclose(est.leaf_trace, trace, **tol("float32"))
  np.testing.assert_allclose(est.leaf_grad_sq, g2, rtol=1e-5)
  np.testing.assert_allclose(est.b_simple, trace.sum() / g2.sum(), rtol=1e-5)


W, STEPS = 2000, 64


@jax.jit
def _windows(g2, s, valid):
  return jax.vmap(M.noise_scale_over_window)(g2, s, valid)


def test_window_ratio_of_means_and_its_standard_error():
  """Per-step estimates with E[S] / E[|G|^2] = 5 (correlated, noisy): over
  2000 windows of 64 steps the ratio of means averages 5 within 4 standard
  errors, and the delta-method standard error matches the windows' actual
  spread within 4 / sqrt(2 (W - 1)) (the relative error of a sample std).
  Masked-out steps (garbage, NaN) change nothing."""
  rng = np.random.default_rng(2)
  z1, z2 = rng.normal(size=(2, W, STEPS))
  g2 = 2 + 0.5 * z1
  s = 10 + 4 * (0.6 * z1 + 0.8 * z2)
  valid = np.ones((W, STEPS), bool)
  out = _windows(*_cast((g2, s)), valid)
  _within_4_standard_errors(out.b_simple, 5.0)
  spread = np.std(np.asarray(out.b_simple, np.float64), ddof=1)
  np.testing.assert_allclose(np.mean(out.stderr), spread, rtol=4 / np.sqrt(2 * (W - 1)))
  assert np.all(np.asarray(out.count) == STEPS)

  valid[:, 40:] = False
  valid[:, 3] = False
  g2[:, 40:], s[:, 3], s[:, 50] = 1e6, np.nan, np.inf
  masked = _windows(*_cast((g2, s)), valid)
  keep = np.ones(STEPS, bool)
  keep[40:], keep[3] = False, False
  want = s[:, keep].mean(1) / g2[:, keep].mean(1)
  np.testing.assert_allclose(masked.b_simple, want, rtol=1e-5)
  assert np.all(np.asarray(masked.count) == keep.sum())
  short = M.noise_scale_over_window(jnp.ones((3, 2)), jnp.ones((3, 2)), np.array([1, 0, 0], bool))
  assert np.isnan(short.stderr).all() and np.all(np.asarray(short.b_simple) == 1)


@pytest.mark.parametrize("call, match", [
    (lambda p, b: M.noise_scale_from_microbatches(jax.grad(loss), p, b, 5), "dividing"),
    (lambda p, b: M.noise_scale_from_microbatches(jax.grad(loss), p, b, 1), "num_micro"),
    (lambda p, b: M.noise_scale_from_microbatches(jax.grad(loss), p, (b[0], b[1][:3]), 4),
     "one leading axis"),
    (lambda p, b: M.noise_scale_from_per_example({"w": jnp.ones((1, 3))}), "B >= 2"),
    (lambda p, b: M.noise_scale_over_window(jnp.ones(4), jnp.ones(3)), "one shape"),
    (lambda p, b: M.noise_scale_over_window(jnp.ones(4), jnp.ones(4), jnp.ones(3, bool)),
     "valid of shape"),
])
def test_bad_arguments(call, match):
  x, y, params = _data()
  with pytest.raises(ValueError, match=match):
    call(_cast(params), _cast((x[:8], y[:8])))
