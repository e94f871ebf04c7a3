"""Configuration of the built-in MLP family (hashable, so jit can treat it as static)."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from gradflow_jax.models import _activations, _initializers

NORMS = (None, "layernorm", "batchnorm")
DTYPES = ("float32", "float64", "bfloat16", "float16")


def _positive_int(label, v):
  if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
    raise ValueError(f"expected {label} to be a positive integer, got {v!r}")


@dataclasses.dataclass(frozen=True)
class MLPConfig:
  """An MLP: ``depth`` hidden layers of ``width`` units, then a linear output.

  Hidden layer l computes z_l = norm(W_l h_(l-1) + b_l) and a_l = phi(z_l).
  Plain: h_l = a_l. Residual (``residual=True``, layers 1..depth-1, the seed's
  block ``x + f(x)`` with f = Linear, activation, Linear):
  h_l = h_(l-1) + V_l a_l + c_l, so each residual layer owns two dense layers.

  Attributes:
    in_dim, width, depth, out_dim: sizes; ``depth`` counts hidden layers.
    activation: a name from ``gradflow_jax.ACTIVATIONS``.
    init: an initializer name, or ``"auto"`` for the activation's recommended one.
    sigma_w: gain of the initializer (the mean-field sigma_w for ``gaussian``
      and ``orthogonal``); ``None`` uses the initializer's default gain.
    sigma_b: biases ~ N(0, sigma_b^2); 0 gives zero biases (``torch_default``
      draws nn.Linear's uniform biases instead).
    norm: ``None``, ``"layernorm"`` or ``"batchnorm"`` (batch statistics).
    residual: use residual blocks for hidden layers 1..depth-1.
    dtype: parameter and compute dtype.
    leaky_slope, elu_alpha, prelu_init: activation hyper-parameters.
  """
  in_dim: int
  width: int
  depth: int
  out_dim: int
  activation: str = "relu"
  init: str = "auto"
  sigma_w: float | None = None
  sigma_b: float = 0.0
  norm: str | None = None
  residual: bool = False
  dtype: str = "float32"
  leaky_slope: float = 0.01
  elu_alpha: float = 1.0
  prelu_init: float = 0.25

  def __post_init__(self):
    for label in ("in_dim", "width", "depth", "out_dim"):
      _positive_int(label, getattr(self, label))
    object.__setattr__(self, "activation",
                       _activations.canonical_name(self.activation))
    if self.init != "auto":
      object.__setattr__(self, "init", _initializers.canonical_init(self.init))
    if self.sigma_w is not None and not (math.isfinite(self.sigma_w) and self.sigma_w > 0):
      raise ValueError(f"expected sigma_w > 0 (finite) or None, got {self.sigma_w!r}")
    if not (math.isfinite(self.sigma_b) and self.sigma_b >= 0):
      raise ValueError(f"expected sigma_b >= 0 (finite), got {self.sigma_b!r}")
    norm = None if self.norm in (None, "none", "") else str(self.norm).lower()
    if norm not in NORMS:
      raise ValueError(f"unknown norm {self.norm!r}; expected one of: none, layernorm, batchnorm")
    object.__setattr__(self, "norm", norm)
    if self.dtype not in DTYPES:
      raise ValueError(f"unknown dtype {self.dtype!r}; expected one of: " + ", ".join(DTYPES))
    _ = self.act  # builds the activation: validates its hyper-parameters

  @property
  def act(self) -> _activations.Activation:
    """The activation registry entry with this config's hyper-parameters."""
    return _activations.get_activation(
        self.activation, slope=self.leaky_slope, alpha=self.elu_alpha,
        prelu_init=self.prelu_init)

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def init_spec(self) -> _initializers.InitSpec:
    """The initializer and gain actually used (``auto`` resolved)."""
    kw = dict(slope=self.leaky_slope, alpha=self.elu_alpha, prelu_init=self.prelu_init)
    if self.init == "auto":
      spec = _initializers.recommended_init(self.activation, **kw)
      return spec if self.sigma_w is None else spec._replace(gain=self.sigma_w)
    gain = self.sigma_w
    if gain is None:
      gain = _initializers.default_gain(self.init, self.activation, **kw)
    return _initializers.InitSpec(self.init, float(gain))

  @property
  def dense_shapes(self) -> tuple[tuple[int, int], ...]:
    """(fan_in, fan_out) of every dense layer, in ``params["layers"]`` order."""
    shapes = [(self.in_dim, self.width)]
    for _ in range(1, self.depth):
      shapes.append((self.width, self.width))
      if self.residual:
        shapes.append((self.width, self.width))
    shapes.append((self.width, self.out_dim))
    return tuple(shapes)

  @property
  def hidden_dense_index(self) -> tuple[int, ...]:
    """Index into ``params["layers"]`` of the dense layer feeding hidden layer l."""
    step = 2 if self.residual else 1
    return (0,) + tuple(1 + step * (l - 1) for l in range(1, self.depth))

  def replace(self, **changes) -> "MLPConfig":
    return dataclasses.replace(self, **changes)
