"""Activation registry: each activation with its analytic derivative and the
facts gradient flow depends on (largest derivative, where it saturates, when a
unit counts as dead, which initializer and gain suit it)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# A unit-example pair is *saturated* when its pre-activation lies in a flat tail
# of a saturating activation: beyond the point where |phi'(z)| stays below 5% of
# the activation's largest derivative (|tanh| > 0.987, sigmoid outside
# [0.0126, 0.987]). At 5% a gradient is cut twentyfold by that one unit.
SATURATION_DERIVATIVE_RATIO = 0.05
# A pair is *inactive* (passes no gradient) when z lies in a tail where |phi'|
# stays below a millionth of the largest derivative: ReLU's z <= 0, where it is
# exactly zero, and the float32-underflow tails of sigmoid/tanh (|z| > ~7.6).
# A unit inactive on every example of a batch is *dead*.
INACTIVE_DERIVATIVE_RATIO = 1e-6

_SQRT2 = math.sqrt(2.0)
_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805
_GELU_TANH_C = math.sqrt(2.0 / math.pi)


@dataclasses.dataclass(frozen=True)
class Activation:
  """One activation function and what it does to gradient flow.

  Attributes:
    name: registry name.
    fn: ``fn(z, slope)`` -> activation; ``slope`` is the learned PReLU slope and
      is ignored by every other activation.
    derivative: ``derivative(z, slope)`` -> d fn / dz, analytic, elementwise.
    max_derivative: the supremum of |phi'(z)| over the real line.
    argmax_derivative: where it is reached (``None`` when on a whole interval,
      ``inf`` when approached only as z -> +inf).
    saturates: ``"both"`` (sigmoid, tanh), ``"negative"`` (ELU, SELU, GELU,
      SiLU, softplus: flat for very negative z) or ``"none"``.
    saturation_bounds: (lo, hi); z < lo or z > hi is a saturated pair.
    inactive_bounds: (lo, hi); z <= lo or z > hi passes (numerically) no
      gradient. PReLU, whose slope is learned, is tested on its derivative.
    gain: the gain ``torch.nn.init.calculate_gain`` gives (ReLU's sqrt(2) for
      activations PyTorch has no gain for).
    recommended_init: initializer name that suits this activation.
    params: hyper-parameters this instance was built with.
  """
  name: str
  fn: Callable
  derivative: Callable
  max_derivative: float
  argmax_derivative: float | None
  saturates: str
  saturation_bounds: tuple[float, float]
  inactive_bounds: tuple[float, float]
  gain: float
  recommended_init: str
  params: tuple = ()

  def __call__(self, z, slope=None):
    return self.fn(z, slope)

  def is_saturated(self, z: jax.Array, slope=None) -> jax.Array:
    """Boolean mask: the pre-activation sits in a flat tail of the activation."""
    del slope
    lo, hi = self.saturation_bounds
    return (z < lo) | (z > hi)

  def is_inactive(self, z: jax.Array, slope=None) -> jax.Array:
    """Boolean mask: |phi'(z)| is (numerically) zero, so no gradient passes."""
    if self.name == "prelu":
      d = jnp.abs(self.derivative(z, slope))
      return d <= INACTIVE_DERIVATIVE_RATIO * self.max_derivative
    lo, hi = self.inactive_bounds
    return (z <= lo) | (z > hi)


def _where_pos(z, pos, neg, inclusive=False):
  return jnp.where(z >= 0 if inclusive else z > 0, pos, neg)


def _elu_derivative(z, alpha):
  return _where_pos(z, 1.0, alpha * jnp.exp(jnp.minimum(z, 0.0))).astype(z.dtype)


def _gelu_derivative(z, _):
  cdf = 0.5 * (1.0 + jax.lax.erf(z / _SQRT2))
  pdf = jnp.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
  return cdf + z * pdf


def _gelu_tanh_derivative(z, _):
  """With 1 + tanh(a) = 2 s(2a) and 1 - tanh(a)^2 = 4 s(2a) s(-2a) (s the
  sigmoid): in the negative tail tanh(a) rounds to -1 in float32, and the
  tanh form then returns rounding noise (~1e-5 at z = -7) for a derivative
  of ~1e-14."""
  inner = _GELU_TANH_C * (z + 0.044715 * z**3)
  up = jax.nn.sigmoid(2 * inner)
  return up + 2 * z * up * jax.nn.sigmoid(-2 * inner) * _GELU_TANH_C * (
      1.0 + 3 * 0.044715 * z * z)


def _silu_derivative(z, _):
  s = jax.nn.sigmoid(z)
  return s * (1.0 + z * (1.0 - s))


def _relu_like(slope):
  fn = lambda z, _: jnp.where(z >= 0, z, slope * z)
  der = lambda z, _: jnp.where(z >= 0, 1.0, slope).astype(z.dtype)
  return fn, der


def _prelu_fn(default_slope):
  def fn(z, slope):
    a = default_slope if slope is None else slope
    return jnp.where(z >= 0, z, a * z)

  def der(z, slope):
    a = default_slope if slope is None else slope
    return jnp.where(z >= 0, jnp.ones_like(z), a * jnp.ones_like(z))
  return fn, der


def _numeric_max(derivative) -> tuple[float, float]:
  """Largest |phi'| and its location: a grid brackets the maximum, then
  bisection on the sign of phi'' (from ``jax.grad``) locates it."""
  z = np.linspace(-20.0, 20.0, 40_001)
  d = np.abs(np.asarray(derivative(jnp.asarray(z), None), np.float64))
  i = int(np.argmax(d))
  second = jax.jit(jax.grad(lambda t: derivative(t, None)))
  lo, hi = float(z[i - 1]), float(z[i + 1])
  sign_lo = float(second(jnp.float64(lo))) > 0
  for _ in range(60):
    mid = 0.5 * (lo + hi)
    if (float(second(jnp.float64(mid))) > 0) == sign_lo:
      lo = mid
    else:
      hi = mid
  at = 0.5 * (lo + hi)
  return abs(float(derivative(jnp.float64(at), None))), at


def _tail_bounds(derivative, max_d, saturates, ratio) -> tuple[float, float]:
  """Points beyond which |phi'| stays under ``ratio * max_d`` (flat tails)."""
  if saturates == "none":
    return (-math.inf, math.inf)
  z = np.linspace(-60.0, 60.0, 1_200_001)
  flat = np.abs(np.asarray(derivative(jnp.asarray(z), None), np.float64)) < ratio * max_d
  steep = np.nonzero(~flat)[0]
  lo = float(z[steep[0]])
  hi = float(z[steep[-1]]) if saturates == "both" else math.inf
  return (lo, hi)


ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "prelu",
               "elu", "selu", "gelu", "gelu_tanh", "silu", "swish", "softplus")
_ALIASES = {"swish": "silu", "linear": "identity"}


def _spec(name, slope, alpha):
  """(fn, derivative, max, argmax, saturates, gain, init) for one name."""
  one = lambda z, _: jnp.ones_like(z)
  if name == "identity":
    return (lambda z, _: z), one, 1.0, None, "none", 1.0, "xavier_uniform"
  if name == "sigmoid":
    der = lambda z, _: jax.nn.sigmoid(z) * (1.0 - jax.nn.sigmoid(z))
    return (lambda z, _: jax.nn.sigmoid(z)), der, 0.25, 0.0, "both", 1.0, "xavier_uniform"
  if name == "tanh":
    der = lambda z, _: 1.0 - jnp.tanh(z) ** 2
    return (lambda z, _: jnp.tanh(z)), der, 1.0, 0.0, "both", 5.0 / 3.0, "xavier_uniform"
  if name == "relu":
    der = lambda z, _: (z > 0).astype(z.dtype)
    return (lambda z, _: jax.nn.relu(z)), der, 1.0, None, "none", _SQRT2, "he_normal"
  if name == "leaky_relu":
    fn, der = _relu_like(slope)
    gain = math.sqrt(2.0 / (1.0 + slope**2))
    return fn, der, max(1.0, abs(slope)), None, "none", gain, "he_normal"
  if name == "prelu":
    fn, der = _prelu_fn(slope)
    gain = math.sqrt(2.0 / (1.0 + slope**2))
    return fn, der, max(1.0, abs(slope)), None, "none", gain, "he_normal"
  if name == "elu":
    fn = lambda z, _: jax.nn.elu(z, alpha)
    der = lambda z, _: _elu_derivative(z, alpha)
    return fn, der, max(1.0, alpha), (None if alpha <= 1 else 0.0), "negative", _SQRT2, "he_normal"
  if name == "selu":
    der = lambda z, _: _SELU_SCALE * _elu_derivative(z, _SELU_ALPHA)
    return (lambda z, _: jax.nn.selu(z)), der, _SELU_SCALE * _SELU_ALPHA, 0.0, "negative", 0.75, "lecun_normal"
  if name == "gelu":
    fn = lambda z, _: jax.nn.gelu(z, approximate=False)
    return fn, _gelu_derivative, None, None, "negative", _SQRT2, "he_normal"
  if name == "gelu_tanh":
    fn = lambda z, _: jax.nn.gelu(z, approximate=True)
    return fn, _gelu_tanh_derivative, None, None, "negative", _SQRT2, "he_normal"
  if name == "silu":
    fn = lambda z, _: jax.nn.silu(z)
    return fn, _silu_derivative, None, None, "negative", _SQRT2, "he_normal"
  if name == "softplus":
    fn = lambda z, _: jax.nn.softplus(z)
    der = lambda z, _: jax.nn.sigmoid(z)
    return fn, der, 1.0, math.inf, "negative", _SQRT2, "he_normal"
  raise AssertionError(name)


def canonical_name(name: str) -> str:
  """Resolves aliases (swish -> silu); raises ValueError for unknown names."""
  if not isinstance(name, str):
    raise TypeError(f"expected an activation name (str), got {type(name).__name__}")
  key = name.strip().lower().replace("-", "_")
  key = _ALIASES.get(key, key)
  if key not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; expected one of: "
                     + ", ".join(ACTIVATIONS))
  return key


@functools.cache
def _build(name: str, slope: float, alpha: float) -> Activation:
  # Locate maxima and tails in float64, once, eagerly even when first asked
  # for while a caller is being traced by jit.
  with jax.enable_x64(True), jax.ensure_compile_time_eval():
    return _build64(name, slope, alpha)


def _build64(name: str, slope: float, alpha: float) -> Activation:
  fn, der, max_d, argmax, saturates, gain, init = _spec(name, slope, alpha)
  if max_d is None:
    max_d, argmax = _numeric_max(der)
  bounds = _tail_bounds(der, max_d, saturates, SATURATION_DERIVATIVE_RATIO)
  if name == "relu":
    dead = (0.0, math.inf)
  elif name in ("leaky_relu", "prelu", "identity"):
    dead = (-math.inf, math.inf)
  else:
    dead = _tail_bounds(der, max_d, saturates, INACTIVE_DERIVATIVE_RATIO)
  params = ()
  if name in ("leaky_relu", "prelu"):
    params = (("slope", slope),)
  elif name == "elu":
    params = (("alpha", alpha),)
  return Activation(name, fn, der, float(max_d), argmax, saturates, bounds, dead,
                    float(gain), init, params)


def get_activation(name: str, *, slope: float = 0.01, alpha: float = 1.0,
                   prelu_init: float = 0.25) -> Activation:
  """Returns the registry entry for ``name``.

  Args:
    name: one of ``ACTIVATIONS`` (case-insensitive; ``swish`` = ``silu``).
    slope: negative slope of ``leaky_relu`` (PyTorch's default 0.01).
    alpha: ``alpha`` of ``elu``.
    prelu_init: initial (and default) slope of ``prelu``.

  Returns:
    An :class:`Activation`.

  Raises:
    ValueError: unknown name, or a slope/alpha that is not finite.

  Example:
    >>> act = get_activation("sigmoid")
    >>> act.max_derivative, act.argmax_derivative
    (0.25, 0.0)
  """
  key = canonical_name(name)
  for label, v in (("slope", slope), ("alpha", alpha), ("prelu_init", prelu_init)):
    if not math.isfinite(v):
      raise ValueError(f"expected a finite {label}, got {v}")
  if alpha <= 0:
    raise ValueError(f"expected alpha > 0, got {alpha}")
  s = prelu_init if key == "prelu" else slope
  return _build(key, float(s) if key in ("leaky_relu", "prelu") else 0.0,
                float(alpha) if key == "elu" else 1.0)
