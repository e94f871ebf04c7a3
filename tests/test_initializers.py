"""Initializers: sample variance against the target, orthogonality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow_jax as gf
from gradflow_jax.models import _initializers

N = 1024


@pytest.mark.parametrize("name", ["xavier_uniform", "xavier_normal", "he_uniform", "he_normal",
                                  "lecun_normal", "gaussian", "torch_default"])
@pytest.mark.parametrize("gain", [1.0, 1.7])
def test_sample_variance_within_one_percent(name, gain):
  w = np.asarray(gf.initializer(name, gain)(jax.random.key(3), (N, N), jnp.float32), np.float64)
  target = _initializers.weight_variance(name, gain, N, N)
  # Var of the sample variance of N^2 draws: 2 sigma^4 / N^2 (normal), smaller
  # for uniform, so 1% is > 10 standard errors.
  assert w.var() == pytest.approx(target, rel=0.01)
  assert abs(w.mean()) < 5 * np.sqrt(target) / N


def test_torch_default_bounds():
  w = np.asarray(gf.initializer("torch_default")(jax.random.key(0), (64, 32)))
  assert np.abs(w).max() <= 1 / np.sqrt(64)


@pytest.mark.parametrize("shape", [(256, 256), (128, 256), (256, 64)])
def test_orthogonal(shape):
  w = np.asarray(gf.initializer("orthogonal", 2.0)(jax.random.key(1), shape), np.float64) / 2.0
  small = min(shape)
  gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
  np.testing.assert_allclose(gram, np.eye(small), atol=2e-5)


def test_recommended_init():
  assert gf.models.recommended_init("tanh") == ("xavier_uniform", pytest.approx(5 / 3))
  assert gf.models.recommended_init("relu") == ("he_normal", pytest.approx(2**0.5))
  assert gf.models.recommended_init("selu").name == "lecun_normal"


def test_unknown_init_and_bad_gain():
  with pytest.raises(ValueError, match="expected one of"):
    gf.initializer("kaiming_magic")
  with pytest.raises(ValueError, match="gain"):
    gf.initializer("he_normal", gain=0.0)
