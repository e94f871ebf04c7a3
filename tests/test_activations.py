"""Activation registry against jax.grad, NumPy and closed forms."""

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow_jax as gf
from gradflow_jax.models import _activations
from helpers import np_act

NAMES = [n for n in gf.ACTIVATIONS if n != "swish"]
GRID = np.concatenate([np.linspace(-50, 50, 2001), [0.0, -1e-7, 1e-7]]).astype(np.float32)


def _autodiff(act, z):
  """jax.grad of the activation in float64 at the float32 points ``z``: in
  float32 autodiff itself rounds (gelu_tanh's tanh reaches -1 in the negative
  tail, and its autodiff returns 0 at z = -5 for -1.5e-6, or noise of
  ~1e-5 at z = -7 for -3e-14, depending on the fusion). XLA:CPU flushes
  float32 subnormals to zero, so the reference sees them as 0 too."""
  z = np.asarray(z, np.float32)
  z = np.where(np.abs(z) < np.finfo(np.float32).tiny, np.float32(0), z)
  with jax.enable_x64(True):
    z64 = jnp.asarray(z, jnp.float64)
    return np.asarray(jax.vmap(jax.grad(lambda t: act(t)))(z64))


@pytest.mark.parametrize("name", NAMES)
def test_derivative_matches_jax_grad_on_wide_grid(name):
  act = gf.get_activation(name)
  np.testing.assert_allclose(act.derivative(jnp.asarray(GRID), None), _autodiff(act, GRID),
                             rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_function_matches_numpy(name):
  act = gf.get_activation(name)
  kw = {"slope": 0.25} if name == "prelu" else {}
  np.testing.assert_allclose(act(jnp.asarray(GRID)), np_act(name, GRID, **kw),
                             rtol=1e-5, atol=1e-5)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(z=st.floats(-50, 50, width=32), name=st.sampled_from(NAMES))
@hypothesis.example(z=-7.0, name="gelu_tanh")  # float32 tanh form: 1e-5 of rounding noise
@hypothesis.example(z=-5.0, name="gelu_tanh")
def test_derivative_property_based(z, name):
  act = gf.get_activation(name)
  want = float(_autodiff(act, [z])[0])
  got = float(act.derivative(jnp.float32(z), None))
  assert math.isclose(got, want, rel_tol=2e-6, abs_tol=1e-6)


@pytest.mark.parametrize("name, value, at", [
    ("sigmoid", 0.25, 0.0), ("tanh", 1.0, 0.0),
    ("gelu", 0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * math.exp(-1) / math.sqrt(2 * math.pi),
     math.sqrt(2)),
    ("selu", 1.0507009873554805 * 1.6732632423543772, 0.0)])
def test_max_derivative_closed_form(name, value, at):
  act = gf.get_activation(name)
  assert act.max_derivative == pytest.approx(value, rel=1e-6)
  assert act.argmax_derivative == pytest.approx(at, abs=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_max_derivative_is_grid_supremum(name):
  act = gf.get_activation(name)
  grid = np.abs(np.asarray(act.derivative(jnp.linspace(-30, 30, 600_001), None)))
  assert grid.max() <= act.max_derivative * (1 + 1e-6)
  assert grid.max() >= act.max_derivative * (1 - 1e-4)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu"])
def test_numeric_argmax_is_a_stationary_point(name):
  act = gf.get_activation(name)
  second = jax.grad(lambda t: act.derivative(t, None))(jnp.float32(act.argmax_derivative))
  assert abs(float(second)) < 1e-5


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "elu", "selu", "gelu", "silu", "softplus"])
def test_saturation_bounds_are_where_derivative_drops(name):
  act = gf.get_activation(name)
  lo, hi = act.saturation_bounds
  thr = _activations.SATURATION_DERIVATIVE_RATIO * act.max_derivative
  beyond = np.linspace(lo - 40, lo - 1e-3, 10_000)
  assert np.all(np.abs(np.asarray(act.derivative(jnp.asarray(beyond), None))) < thr)
  assert abs(float(act.derivative(jnp.float32(lo + 2e-3), None))) >= thr * 0.999
  if act.saturates == "both":
    assert hi == pytest.approx(-lo, abs=1e-3)  # odd symmetry of sigmoid/tanh derivatives
  else:
    assert hi == math.inf


def test_tanh_saturation_matches_closed_form():
  # 1 - tanh(z)^2 = r  <=>  z = atanh(sqrt(1 - r))
  lo, hi = gf.get_activation("tanh").saturation_bounds
  assert hi == pytest.approx(math.atanh(math.sqrt(1 - _activations.SATURATION_DERIVATIVE_RATIO)), abs=2e-4)


def test_relu_family_never_saturates_and_dead_is_nonpositive():
  z = jnp.asarray(GRID)
  relu = gf.get_activation("relu")
  assert not bool(jnp.any(relu.is_saturated(z)))
  np.testing.assert_array_equal(relu.is_inactive(z), GRID <= 0)
  assert not bool(jnp.any(gf.get_activation("leaky_relu").is_inactive(z)))
  prelu = gf.get_activation("prelu")
  np.testing.assert_array_equal(prelu.is_inactive(z, jnp.float32(0.0)), GRID < 0)


@pytest.mark.parametrize("name, gain", [
    ("identity", 1.0), ("sigmoid", 1.0), ("tanh", 5 / 3), ("relu", math.sqrt(2)),
    ("selu", 0.75)])
def test_gains_match_torch_calculate_gain(name, gain):
  assert gf.get_activation(name).gain == pytest.approx(gain)


def test_leaky_gain_uses_slope():
  assert gf.get_activation("leaky_relu", slope=0.2).gain == pytest.approx(math.sqrt(2 / 1.04))


def test_aliases_and_bad_names():
  assert gf.get_activation("Swish").name == "silu"
  with pytest.raises(ValueError, match="expected one of"):
    gf.get_activation("relu6")
  with pytest.raises(ValueError, match="alpha"):
    gf.get_activation("elu", alpha=-1.0)
