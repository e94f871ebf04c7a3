"""Gradients of a vanilla RNN through time: ||dh_T/dh_t||, ||dL/dh_t|| and
the Pascanu bound, per example and step."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradflow_jax.measure import _linalg
from gradflow_jax.models import _losses
from gradflow_jax.models._rnn import rnn_apply, RNNConfig


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
