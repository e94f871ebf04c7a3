"""A vanilla RNN, h_t = phi(W h_(t-1) + U x_t + b), and its gradients through time."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax import _activations, _initializers, _linalg, _losses

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
  from gradflow_jax import _probe
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


class ThroughTime(NamedTuple):
  """Gradients through time, per example and step t = 0..T-1.

  Attributes:
    jacobian_norm: (batch, T) ||dh_(T-1)/dh_t||_2 (spectral norm) from state
      t to the last state; the entry at t = T-1 is the identity (norm 1).
      Falling with T - t: vanishing.
    jacobian_frobenius: (batch, T) ||dh_T/dh_t||_F.
    state_grad_norm: (batch, T) ||dL/dh_t|| for a squared-error loss on the
      last state's readout.
    pascanu_bound: (T,) (gamma ||W||)^(T-t), with gamma = max|phi'|.
    weight_norm: ||W||_2.
  """
  jacobian_norm: jax.Array
  jacobian_frobenius: jax.Array
  state_grad_norm: jax.Array
  pascanu_bound: jax.Array
  weight_norm: jax.Array


@functools.partial(jax.jit, static_argnums=0)
def _through_time(cfg, params, xs, ys):
  _, hs = rnn_apply(cfg, params, xs)
  act = cfg.act
  w = params["w"]
  # dh_t/dh_(t-1) = diag(phi'(z_t)) W^T acting on column tangents; accumulate from the end.
  h_prev = jnp.concatenate([jnp.zeros_like(hs[:1]), hs[:-1]])
  zs = jnp.einsum("tbi,ij->tbj", h_prev, w) + jnp.einsum("tbi,ij->tbj", xs, params["u"]) \
      + params["b"][None, None]
  d = act.derivative(zs, None)  # (T, batch, hidden)
  eye = jnp.broadcast_to(jnp.eye(cfg.hidden, dtype=w.dtype), (xs.shape[1], cfg.hidden, cfg.hidden))

  def back(j, d_t):
    # j = dh_n/dh_t (n = T-1); dh_n/dh_(t-1) = j diag(phi'(z_t)) W^T
    return jnp.einsum("bik,bk,jk->bij", j, d_t, w), j

  j0, js = jax.lax.scan(back, eye, d[1:][::-1])  # js: J_n, ..., J_1
  full = jnp.concatenate([j0[None], js[::-1]])  # (T, batch, H, H): J_0 .. J_n
  sv = _linalg.singular_values(full)[..., 0]
  fro = jnp.sqrt(jnp.sum(full**2, axis=(-2, -1)))

  def loss(p):
    out, _ = rnn_apply(cfg, params, xs, p)
    return _losses.loss_value("mse", out, ys)

  g = jax.grad(loss)(jnp.zeros_like(hs))
  gnorm = jnp.sqrt(jnp.sum(g**2, axis=-1))
  wnorm = _linalg.singular_values(w)[0]
  T = xs.shape[0]
  bound = (act.max_derivative * wnorm) ** jnp.arange(T - 1, -1, -1, dtype=w.dtype)
  return ThroughTime(sv.T, fro.T, gnorm.T, bound, wnorm)


def rnn_through_time(cfg: RNNConfig, params, xs: jax.Array, ys: jax.Array | None = None) -> ThroughTime:
  """Norms of dh_T/dh_t and dL/dh_t for t = 0..T-1 (the last step is T-1).

  Args:
    cfg, params: the RNN.
    xs: (T, batch, in_dim) input sequences.
    ys: (batch, out_dim) regression targets for the loss (zeros when ``None``).

  References:
    Pascanu, Mikolov & Bengio 2013, https://arxiv.org/abs/1211.5063.
  """
  xs = jnp.asarray(xs, jnp.dtype(cfg.dtype))
  if xs.ndim != 3 or xs.shape[-1] != cfg.in_dim or xs.shape[0] < 2:
    raise ValueError(f"expected inputs of shape (T >= 2, batch, {cfg.in_dim}), got {xs.shape}")
  ys = jnp.zeros((xs.shape[1], cfg.out_dim), xs.dtype) if ys is None else jnp.asarray(ys, xs.dtype)
  if ys.shape != (xs.shape[1], cfg.out_dim):
    raise ValueError(f"expected targets of shape {(xs.shape[1], cfg.out_dim)}, got {ys.shape}")
  return _through_time(cfg.replace(scale=None), params, xs, ys)  # scale only shapes init


def run_rnn_sweep(cfg: RNNConfig, scales, steps: int = 50, batch: int = 8, seed: int = 0,
                  on_run=None) -> list[dict]:
  """``rnn_through_time`` for each scale of W (same seed and inputs): the change
  from vanishing to exploding as the scale crosses 1/gamma. Host results."""
  if steps < 2 or batch < 1:
    raise ValueError(f"expected steps >= 2 and batch >= 1, got {steps} and {batch}")
  xs = jax.random.normal(jax.random.key(seed + 1), (steps, batch, cfg.in_dim))
  runs = []
  for scale in scales:
    c = cfg.replace(scale=float(scale))
    if on_run is not None:
      on_run(f"{c.scale_kind} {scale:g}")
    r = jax.device_get(rnn_through_time(c, init_rnn(jax.random.key(seed), c), xs))
    runs.append({"activation": c.activation, "scale": float(scale), "scale_kind": c.scale_kind,
                 "gamma": c.act.max_derivative, **r._asdict()})
  return runs
