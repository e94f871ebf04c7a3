"""A vanilla RNN, h_t = phi(W h_(t-1) + U x_t + b): configuration, init and
forward (its gradients through time are measured in ``measure/_through_time``)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax.models import _activations, _initializers

SCALE_KINDS = ("spectral_norm", "spectral_radius")


@dataclasses.dataclass(frozen=True)
class RNNConfig:
  """A vanilla RNN with a linear readout of the last state.

  Attributes:
    in_dim, hidden, out_dim: sizes.
    activation: ``tanh`` or ``sigmoid`` (any registry name works).
    init: initializer of the recurrent matrix W (before rescaling).
    scale: W is rescaled so that its ``scale_kind`` equals this (``None``
      keeps the initializer's scale).
    scale_kind: ``"spectral_norm"`` (||W||_2, what the Pascanu bound uses) or
      ``"spectral_radius"`` (largest |eigenvalue|, the long-run growth rate).
  """
  in_dim: int
  hidden: int
  out_dim: int = 1
  activation: str = "tanh"
  init: str = "orthogonal"
  scale: float | None = 1.0
  scale_kind: str = "spectral_norm"
  dtype: str = "float32"

  def __post_init__(self):
    for label in ("in_dim", "hidden", "out_dim"):
      v = getattr(self, label)
      if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"expected {label} to be a positive integer, got {v!r}")
    object.__setattr__(self, "activation", _activations.canonical_name(self.activation))
    object.__setattr__(self, "init", _initializers.canonical_init(self.init))
    if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
      raise ValueError(f"expected scale > 0 or None, got {self.scale!r}")
    if self.scale_kind not in SCALE_KINDS:
      raise ValueError(f"unknown scale_kind {self.scale_kind!r}; expected one of: "
                       + ", ".join(SCALE_KINDS))

  @property
  def act(self):
    return _activations.get_activation(self.activation)

  def replace(self, **changes) -> "RNNConfig":
    return dataclasses.replace(self, **changes)


def _matrix_scale(w: np.ndarray, kind: str) -> float:
  if kind == "spectral_norm":
    return float(np.linalg.norm(w, 2))
  return float(np.max(np.abs(np.linalg.eigvals(w))))


def init_rnn(key: jax.Array, cfg: RNNConfig) -> dict:
  """``{"w": (hidden, hidden), "u": (in_dim, hidden), "b": (hidden,), "v":
  (hidden, out_dim), "c": (out_dim,)}``; h_t = phi(h_(t-1) W + x_t U + b)."""
  kw, ku, kv = jax.random.split(key, 3)
  w = np.array(_initializers.initializer(cfg.init)(kw, (cfg.hidden, cfg.hidden)), np.float64)  # a copy: x64 arrays are read-only views
  if cfg.scale is not None:
    w *= cfg.scale / _matrix_scale(w, cfg.scale_kind)
  dtype = jnp.dtype(cfg.dtype)
  u = _initializers.initializer("xavier_normal")(ku, (cfg.in_dim, cfg.hidden))
  v = _initializers.initializer("xavier_normal")(kv, (cfg.hidden, cfg.out_dim))
  return {"w": jnp.asarray(w, dtype), "u": u.astype(dtype), "b": jnp.zeros(cfg.hidden, dtype),
          "v": v.astype(dtype), "c": jnp.zeros(cfg.out_dim, dtype)}


def rnn_apply(cfg: RNNConfig, params, xs: jax.Array, perturb: jax.Array | None = None):
  """Runs the RNN over ``xs`` (T, batch, in_dim) from h_0 = 0.

  ``perturb`` (T, batch, hidden) is added to each h_t, so that the gradient with
  respect to it is dL/dh_t. Returns (output of the last state, hs (T, batch, hidden)).
  """
  act = cfg.act
  h0 = jnp.zeros(xs.shape[1:2] + (cfg.hidden,), params["w"].dtype)
  if perturb is None:
    perturb = jnp.zeros(xs.shape[:2] + (cfg.hidden,), params["w"].dtype)

  def step(h, inputs):
    x, p = inputs
    h = act(h @ params["w"] + x @ params["u"] + params["b"][None], None) + p
    return h, h

  h, hs = jax.lax.scan(step, h0, (xs, perturb))
  return h @ params["v"] + params["c"][None], hs


def rnn_model(cfg: RNNConfig, params):
  """The RNN as a :class:`ProbedModel` on batch-first inputs (batch, T,
  in_dim): per step t, taps ``z/layer_t`` (the pre-activation, role ``pre``,
  with the config's activation) and ``h/layer_t`` (the state), through the
  ``lax.scan`` over time, so every consumer of users' models measures it."""
  from gradflow_jax.capture import _probed as _probe
  act = cfg.act

  def apply_fn(params, x):
    xs = jnp.swapaxes(x, 0, 1)
    h0 = jnp.zeros(xs.shape[1:2] + (cfg.hidden,), params["w"].dtype)

    def step(h, x_t):
      z = _probe.tap("z", h @ params["w"] + x_t @ params["u"] + params["b"][None], "pre",
                     cfg.activation)
      h = _probe.tap("h", act(z, None), "post")
      return h, None

    h, _ = jax.lax.scan(step, h0, xs)
    return h @ params["v"] + params["c"][None]
  return _probe.probed(apply_fn, params, f"rnn {cfg.hidden} {cfg.activation}")
