"""Jacobians of the built-in MLP: layer to layer and input to every depth,
exactly (one compiled scan carrying the running product) or matrix-free
(power iteration on jvp/vjp)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax.measure import _linalg, _rows
from gradflow_jax.models import _mlp
from gradflow_jax.models._config import MLPConfig

METHODS = ("exact", "power", "lanczos")
LANCZOS_STEPS = 48


class JacobianSpectra(NamedTuple):
  """Input-to-depth Jacobians dh_l/dx, per example and requested depth.

  Attributes:
    depths: (n,) the depths l (1 = output of the first hidden layer).
    singular_values: (batch, n, k) descending, k = min(width, in_dim); exact only
      (``None`` for power).
    spectral_norm: (batch, n) largest singular value: how much the most
      amplified input direction grows by depth l. > 1 growing with l: exploding.
    mean_sq_singular_value: (batch, n) ||J||_F^2 / k; mean-field theory
      predicts chi_1^l. Healthy (dynamical isometry): about 1 at every depth.
    sq_singular_value_variance: (batch, n) variance of the squared singular
      values (exact only, NaN for power); 0 means perfectly isometric.
    min_singular_value: (batch, n) smallest singular value (exact only).
    converged: (batch, n) bool, power iteration met its tolerance (exact: True).
    first_nonfinite_depth: (batch,) first depth whose Jacobian has NaN/Inf
      (an overflow), or -1.
  """
  depths: jax.Array
  singular_values: jax.Array | None
  spectral_norm: jax.Array
  mean_sq_singular_value: jax.Array
  sq_singular_value_variance: jax.Array
  min_singular_value: jax.Array
  converged: jax.Array
  first_nonfinite_depth: jax.Array


def check_jacobian_config(cfg: MLPConfig) -> None:
  if cfg.norm == "batchnorm":
    raise ValueError("expected a per-example model for Jacobians, got norm='batchnorm' "
                     "(batch statistics couple the examples); use layernorm or none")


def _step_fn(cfg, lp):
  """h -> h_next for one example."""
  return lambda h: _mlp.hidden_step(cfg, lp, h)[2]


def _push(cfg, lp, h, tangents):
  """(h_next, J h-tangents): forward one layer and push each column of
  ``tangents`` (d, m) through its Jacobian (jvp, vmapped over columns)."""
  h_next, lin = jax.linearize(_step_fn(cfg, lp), h)
  return h_next, jax.vmap(lin, in_axes=1, out_axes=1)(tangents)


def _spectrum_summary(sv):
  sq = sv**2
  return sv[..., 0], jnp.mean(sq, -1), jnp.var(sq, -1), sv[..., -1]


def normalize_depths(cfg: MLPConfig, depths) -> tuple[int, ...]:
  """Validated, sorted, unique depths in 1..cfg.depth (all when ``None``)."""
  if depths is None:
    return tuple(range(1, cfg.depth + 1))
  out = sorted({int(d) for d in np.atleast_1d(np.asarray(depths))})
  if not out or out[0] < 1 or out[-1] > cfg.depth:
    raise ValueError(f"expected depths in 1..{cfg.depth}, got {list(np.atleast_1d(depths))}")
  return tuple(out)


def log_spaced_depths(max_depth: int, n: int = 16) -> tuple[int, ...]:
  """About ``n`` depths from 1 to ``max_depth``, evenly spaced in log scale."""
  return tuple(sorted({int(round(d)) for d in np.geomspace(1, max_depth, n)}))


def _exact_one(cfg: MLPConfig, lp0, stacked, x, wanted: tuple[bool, ...], gram: bool = False):
  """All depths for one example: a scan carrying J_l = (dh_l/dh_(l-1)) J_(l-1).

  ``lp0`` are layer 0's parameters, ``stacked`` those of layers 1..depth-1
  (``_mlp.stacked_layer_params``). Singular values are computed
  (``lax.cond``) only at wanted depths; the Frobenius norm at every depth.
  """
  k = min(cfg.width, cfg.in_dim)
  h0, j0 = _push(cfg, lp0, x, jnp.eye(cfg.in_dim, dtype=x.dtype))

  def svals(j, want):
    return jax.lax.cond(want, lambda: _linalg.singular_values(j, gram)[:k],
                        lambda: jnp.zeros((k,), j.dtype))

  sv0 = svals(j0, wanted[0])
  if cfg.depth == 1:
    return sv0[None], jnp.sum(j0**2)[None]

  def body(carry, inputs):
    h, j = carry
    lp, want = inputs
    h, j = _push(cfg, lp, h, j)
    return (h, j), (svals(j, want), jnp.sum(j**2))

  _, (sv, fro) = jax.lax.scan(body, (h0, j0), (stacked, jnp.asarray(wanted[1:])))
  return jnp.concatenate([sv0[None], sv]), jnp.concatenate([jnp.sum(j0**2)[None], fro])


@functools.partial(jax.jit, static_argnums=(0, 3))
def _exact_all(cfg, params, x, depths):
  wanted = tuple(d in depths for d in range(1, cfg.depth + 1))
  lp0 = _mlp.layer_params(cfg, params, 0)
  stacked = _mlp.stacked_layer_params(cfg, params) if cfg.depth > 1 else None
  sv, fro = jax.vmap(lambda xi: _exact_one(cfg, lp0, stacked, xi, wanted))(x)
  idx = jnp.asarray(depths) - 1
  sv, fro = sv[:, idx], fro[:, idx]
  top, msq, var, low = _spectrum_summary(sv)
  return sv, top, fro / sv.shape[-1], var, low, fro


def _forward_to(cfg, params, x, depth):
  """h_depth(x) for one example, depth traced: a scan whose later steps are
  skipped, so one program serves every depth."""
  h = _step_fn(cfg, _mlp.layer_params(cfg, params, 0))(x)
  if cfg.depth == 1:
    return h
  stacked = _mlp.stacked_layer_params(cfg, params)

  def body(h, inputs):
    lp, l = inputs
    return jnp.where(l < depth, _step_fn(cfg, lp)(h), h), None

  h, _ = jax.lax.scan(body, h, (stacked, jnp.arange(1, cfg.depth)))
  return h


def _power_map(fn, x, key, tol, max_iter, method="power"):
  """Top singular value of the Jacobian of ``fn`` at ``x`` (vector in, vector
  out), matrix-free: power iteration or Lanczos on jvp/vjp."""
  _, vjp = jax.vjp(fn, x)
  matvec = lambda v: jax.jvp(fn, (x,), (v,))[1]
  rmatvec = lambda u: vjp(u)[0]
  v0 = jax.random.normal(key, x.shape, x.dtype)
  if method == "lanczos":
    return _linalg.lanczos_top_singular_value(matvec, rmatvec, v0, LANCZOS_STEPS, tol)
  return _linalg.power_top_singular_value(matvec, rmatvec, v0, tol, max_iter)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6))
def _power_all(cfg, params, x, depths, tol, max_iter, method):
  keys = jax.random.split(jax.random.key(0), x.shape[0])

  def one(xi, key, depth):
    return _power_map(lambda v: _forward_to(cfg, params, v, depth), xi, key, tol, max_iter,
                      method)

  per_depth = jax.vmap(jax.vmap(one, (None, None, 0)), (0, 0, None))
  sigma, conv = per_depth(x, keys, jnp.asarray(depths))
  return sigma, conv


def _check(cfg, params, x, method, tol, max_iter):
  if not isinstance(cfg, MLPConfig):
    raise TypeError(f"expected an MLPConfig, got {type(cfg).__name__}")
  check_jacobian_config(cfg)
  _mlp.check_params(cfg, params)
  _mlp.check_inputs(cfg, x)
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of: " + ", ".join(METHODS))
  if not tol > 0:
    raise ValueError(f"expected a tolerance > 0, got {tol}")
  if int(max_iter) < 1:
    raise ValueError(f"expected max_iter >= 1, got {max_iter}")


def _first_nonfinite(values, depths):
  return _rows.first_flagged(~jnp.isfinite(values), depths)


def jacobian_spectra(cfg: MLPConfig, params, x: jax.Array, depths=None,
                     method: str = "exact", tol: float = 1e-5,
                     max_iter: int = 1000) -> JacobianSpectra:
  """Spectra of the input-to-depth Jacobians dh_l/dx, per example.

  Args:
    cfg, params: the model (not batchnorm: per-example Jacobians need
      per-example models).
    x: (batch, in_dim) inputs; each example gets its own Jacobians.
    depths: depths 1..depth at which to report (all when ``None``); with
      ``exact`` the singular values are computed only there, while the running
      product is carried through every layer in one compiled scan.
    method: ``"exact"`` (full product and SVD), ``"power"`` (power iteration)
      or ``"lanczos"`` (48 Lanczos steps): matrix-free top singular value,
      never forming a matrix, for widths where the full Jacobian does not
      fit. Lanczos is the faster and more accurate of the two when the top
      singular values are close, as they are for random matrices.
    tol, max_iter: relative tolerance (power: change between iterations;
      Lanczos: Ritz residual) and power iteration's cap.

  Returns:
    :class:`JacobianSpectra`.

  References:
    Pennington, Schoenholz & Ganguli 2017, https://arxiv.org/abs/1711.04735;
    Pascanu, Mikolov & Bengio 2013, https://arxiv.org/abs/1211.5063.
  """
  x = jnp.asarray(x)
  _check(cfg, params, x, method, tol, max_iter)
  depths = normalize_depths(cfg, depths)
  x = x.reshape(-1, cfg.in_dim).astype(cfg.jnp_dtype)
  if method == "exact":
    sv, top, msq, var, low, fro = _exact_all(cfg, params, x, depths)
    conv = jnp.ones(top.shape, bool)
    return JacobianSpectra(jnp.asarray(depths), sv, top, msq, var, low, conv,
                           _first_nonfinite(fro, depths))
  sigma, conv = _power_all(cfg, params, x, depths, float(tol), int(max_iter), method)
  nan = jnp.full(sigma.shape, jnp.nan, sigma.dtype)
  return JacobianSpectra(jnp.asarray(depths), None, sigma, nan, nan, nan, conv,
                         _first_nonfinite(sigma, depths))


def layer_norms_stacked(cfg: MLPConfig, lp0, stacked, x, method: str, tol: float,
                        max_iter: int, layers: tuple[int, ...] | None = None):
  """(batch, layers) spectral norms of dh_l/dh_(l-1) and convergence flags, from
  layer 0's parameters and the stacked ones of layers 1..depth-1 (a scan runs
  the forward pass, a vmap over layers the norms: the program does not grow
  with depth). ``layers`` (sorted, static) picks the layers measured; every
  layer when None."""
  layers = tuple(range(cfg.depth)) if layers is None else tuple(layers)
  keys = jax.random.split(jax.random.key(1), cfg.depth)

  def norm_at(lp, h, key):
    fn = _step_fn(cfg, lp)
    if method == "exact":
      return jnp.linalg.svd(jax.jacfwd(fn)(h), compute_uv=False)[0], jnp.bool_(True)
    return _power_map(fn, h, key, tol, max_iter, method)

  per_example = lambda lp, hs, key: jax.vmap(lambda h: norm_at(lp, h, key))(hs)
  norms, conv = [], []
  if layers[0] == 0:
    first, conv0 = per_example(lp0, x, keys[0])
    norms.append(first[None])
    conv.append(conv0[None])
  later = np.asarray([l for l in layers if l > 0], int)
  if later.size:
    h0 = jax.vmap(_step_fn(cfg, lp0))(x)

    def forward(h, lp):
      return jax.vmap(_step_fn(cfg, lp))(h), h

    _, inputs = jax.lax.scan(forward, h0, stacked)  # input of layers 1..depth-1
    inputs = inputs[later - 1]
    if norms:
      # The layers' loops must run after layer 0's, not beside it: XLA:CPU
      # running the two independent while loops at once deadlocked (0% CPU, for
      # good) in about half of the runs on 2 cores. A zero that depends on
      # layer 0 orders them.
      inputs = inputs + (0 * jnp.nan_to_num(norms[0][0, 0])).astype(inputs.dtype)
    chosen = jax.tree.map(lambda a: a[later - 1], stacked)
    rest, rest_conv = jax.vmap(per_example)(chosen, inputs, keys[later])
    norms.append(rest)
    conv.append(rest_conv)
  return jnp.concatenate(norms).T, jnp.concatenate(conv).T


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _layer_norms(cfg, params, x, method, tol, max_iter):
  stacked = _mlp.stacked_layer_params(cfg, params) if cfg.depth > 1 else None
  return layer_norms_stacked(cfg, _mlp.layer_params(cfg, params, 0), stacked, x, method, tol,
                             max_iter)


def layer_jacobian_norms(cfg: MLPConfig, params, x: jax.Array, method: str = "lanczos",
                         tol: float = 1e-5, max_iter: int = 1000,
                         return_converged: bool = False):
  """Spectral norms of the layer-to-layer Jacobians dh_l/dh_(l-1), per example.

  Returns:
    (batch, depth) array (l = 0 is dh_0/dx); with ``return_converged`` also a
    (batch, depth) bool array saying where power iteration met ``tol``.
    A product of these bounds the input-output spectral norm; values well
    above 1 through depth explode gradients, well below 1 vanish them.
  """
  x = jnp.asarray(x)
  _check(cfg, params, x, method, tol, max_iter)
  x = x.reshape(-1, cfg.in_dim).astype(cfg.jnp_dtype)
  norms, conv = _layer_norms(cfg, params, x, method, float(tol), int(max_iter))
  return (norms, conv) if return_converged else norms


def weight_spectral_norms(params) -> jax.Array:
  """||W_l||_2 of every dense layer in ``params["layers"]`` order."""
  return jnp.stack([_linalg.singular_values(l["w"])[0] for l in params["layers"]])


def product_bound(cfg: MLPConfig, params) -> jax.Array:
  """prod_l ||W_l|| max|phi'| over the hidden layers, for every depth: the upper
  bound on ||dh_l/dx|| that the exploding-gradient argument uses (plain MLPs
  without normalization)."""
  dense = jnp.asarray(cfg.hidden_dense_index)
  norms = weight_spectral_norms(params)[dense]
  return jnp.cumprod(norms * cfg.act.max_derivative)
