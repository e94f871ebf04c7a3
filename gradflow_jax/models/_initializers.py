"""Weight initializers with a gain, in the (fan_in, fan_out) layout.

Conventions follow PyTorch's ``torch.nn.init`` where the two differ from JAX:
``he_normal`` and ``lecun_normal`` here draw from an untruncated normal (as
``kaiming_normal_`` does), whereas ``jax.nn.initializers.he_normal`` and
``lecun_normal`` draw from a truncated normal rescaled to the same variance.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax

from gradflow_jax.models import _activations

INITIALIZERS = ("xavier_uniform", "xavier_normal", "he_uniform", "he_normal",
                "lecun_normal", "orthogonal", "gaussian", "torch_default")
_ALIASES = {"kaiming_normal": "he_normal", "kaiming_uniform": "he_uniform",
            "glorot_uniform": "xavier_uniform", "glorot_normal": "xavier_normal"}


class InitSpec(NamedTuple):
  """An initializer name and the gain it is used with."""
  name: str
  gain: float


def canonical_init(name: str) -> str:
  """Resolves aliases (kaiming_normal -> he_normal); ValueError if unknown."""
  if not isinstance(name, str):
    raise TypeError(f"expected an initializer name (str), got {type(name).__name__}")
  key = _ALIASES.get(name.strip().lower(), name.strip().lower())
  if key not in INITIALIZERS:
    raise ValueError(f"unknown initializer {name!r}; expected one of: "
                     + ", ".join(INITIALIZERS + ("auto",)))
  return key


def weight_variance(name: str, gain: float, fan_in: int, fan_out: int) -> float:
  """The per-entry variance that ``initializer(name, gain)`` targets."""
  name = canonical_init(name)
  if name.startswith("xavier"):
    return gain**2 * 2.0 / (fan_in + fan_out)
  if name == "torch_default":
    return gain**2 / (3.0 * fan_in)
  if name == "orthogonal":
    return gain**2 / max(fan_in, fan_out)
  return gain**2 / fan_in


def initializer(name: str, gain: float = 1.0) -> Callable:
  """Returns ``init(key, (fan_in, fan_out), dtype) -> weights``.

  Args:
    name: ``xavier_uniform``/``xavier_normal`` (variance gain^2 * 2 /
      (fan_in + fan_out), Glorot & Bengio 2010); ``he_uniform``/``he_normal``
      (gain^2 / fan_in, He et al. 2015, pass gain = sqrt(2) for ReLU);
      ``lecun_normal`` (gain^2 / fan_in); ``gaussian`` (the mean-field
      convention W ~ N(0, sigma_w^2 / fan_in), sigma_w = gain);
      ``orthogonal`` (W = gain * O, Saxe et al. 2014, rows or columns
      orthonormal); ``torch_default`` (U(-gain/sqrt(fan_in), gain/sqrt(fan_in)),
      what ``nn.Linear`` draws: variance gain^2 / (3 fan_in)).
    gain: multiplies the standard deviation.

  Returns:
    An initializer with JAX's signature.

  References:
    Glorot & Bengio 2010, http://proceedings.mlr.press/v9/glorot10a.html;
    He et al. 2015, https://arxiv.org/abs/1502.01852;
    Saxe et al. 2014, https://arxiv.org/abs/1312.6120.

  Example:
    >>> w = initializer("he_normal", gain=2 ** 0.5)(jax.random.key(0), (256, 256))
  """
  name = canonical_init(name)
  if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain > 0):
    raise ValueError(f"expected a finite gain > 0, got {gain!r}")
  vs = jax.nn.initializers.variance_scaling
  g2 = float(gain) ** 2
  if name == "xavier_uniform":
    return vs(g2, "fan_avg", "uniform")
  if name == "xavier_normal":
    return vs(g2, "fan_avg", "normal")
  if name == "he_uniform":
    return vs(g2, "fan_in", "uniform")
  if name in ("he_normal", "lecun_normal", "gaussian"):
    return vs(g2, "fan_in", "normal")
  if name == "torch_default":
    return vs(g2 / 3.0, "fan_in", "uniform")
  return jax.nn.initializers.orthogonal(scale=float(gain))


def recommended_init(activation: str, **act_kwargs) -> InitSpec:
  """Initializer and gain that suit ``activation``.

  Xavier (uniform) for sigmoid/tanh-like activations, He (normal) for the
  ReLU family, LeCun normal for SELU, each with the gain of
  ``torch.nn.init.calculate_gain``.

  Example:
    >>> recommended_init("tanh")
    InitSpec(name='xavier_uniform', gain=1.6666666666666667)
  """
  act = _activations.get_activation(activation, **act_kwargs)
  gain = 1.0 if act.name == "selu" else act.gain
  return InitSpec(act.recommended_init, gain)


def default_gain(init: str, activation: str, **act_kwargs) -> float:
  """The gain used when the user names an initializer but no gain.

  PyTorch's defaults: 1 for Xavier, orthogonal, LeCun, Gaussian and
  torch_default; for He, the activation's gain within the ReLU family and
  sqrt(2) otherwise (He's derivation assumes ReLU).
  """
  init = canonical_init(init)
  if not init.startswith("he_"):
    return 1.0
  act = _activations.get_activation(activation, **act_kwargs)
  if act.name in ("relu", "leaky_relu", "prelu"):
    return act.gain
  return math.sqrt(2.0)
