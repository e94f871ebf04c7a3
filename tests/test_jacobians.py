"""Jacobians: the all-depth scan against jacfwd, jacrev and the closed form;
power iteration against exact SVD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow_jax as gf
from gradflow_jax.models import _mlp
from helpers import np_act

KEY = jax.random.key(0)


def _setup(batch=3, **kw):
  base = dict(in_dim=8, width=12, depth=5, out_dim=2, activation="tanh", init="gaussian",
              sigma_w=1.6, sigma_b=0.2)
  cfg = gf.MLPConfig(**{**base, **kw})
  params = gf.init_mlp(KEY, cfg)
  x = np.asarray(jax.random.normal(jax.random.key(1), (batch, cfg.in_dim)))
  return cfg, params, x


def _all_hidden(cfg, params):
  """x (in_dim,) -> (depth, width): every layer's output, for jacfwd/jacrev."""
  return lambda xi: _mlp.mlp_apply(cfg, params, xi[None])[1].hidden[:, 0]


@pytest.mark.parametrize("kw", [dict(), dict(activation="gelu", residual=True, norm="layernorm"),
                                dict(activation="relu", init="he_normal", sigma_w=None)])
def test_exact_spectra_match_jacfwd_and_jacrev(kw):
  cfg, params, x = _setup(**kw)
  spec = gf.jacobian_spectra(cfg, params, x)
  assert spec.singular_values.shape == (3, cfg.depth, min(cfg.width, cfg.in_dim))
  jf = np.asarray(jax.jit(jax.vmap(jax.jacfwd(_all_hidden(cfg, params))))(x), np.float64)
  jr = np.asarray(jax.jit(jax.vmap(jax.jacrev(_all_hidden(cfg, params))))(x), np.float64)
  np.testing.assert_allclose(jf, jr, rtol=1e-5, atol=1e-6)
  sv = np.linalg.svd(jf, compute_uv=False)  # (batch, depth, k)
  np.testing.assert_allclose(spec.singular_values, sv, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(spec.mean_sq_singular_value, np.mean(sv**2, -1), rtol=2e-4)
  np.testing.assert_allclose(spec.sq_singular_value_variance, np.var(sv**2, -1), rtol=2e-3,
                             atol=1e-6)
  np.testing.assert_allclose(spec.min_singular_value, sv[..., -1], rtol=2e-3, atol=1e-6)
  assert np.all(np.asarray(spec.first_nonfinite_depth) == -1)


def test_exact_matches_closed_form_product():
  """J_l = D_l W_l^T ... D_0 W_0^T with D = diag(phi'(z)), in NumPy."""
  cfg, params, x = _setup(activation="sigmoid", sigma_w=3.0)
  spec = gf.jacobian_spectra(cfg, params, x[:1])
  _, trace = gf.models.mlp_forward(cfg, params, x[:1])
  j = np.eye(cfg.in_dim)
  for l in range(cfg.depth):
    z = np.asarray(trace.pre[l][0], np.float64)
    d = (np_act("sigmoid", z + 1e-6) - np_act("sigmoid", z - 1e-6)) / 2e-6
    w = np.asarray(params["layers"][l]["w"], np.float64)
    j = (d[:, None] * w.T) @ j
    np.testing.assert_allclose(spec.spectral_norm[0, l], np.linalg.norm(j, 2), rtol=2e-5)


def test_depth_subset_equals_full():
  cfg, params, x = _setup()
  full = gf.jacobian_spectra(cfg, params, x)
  sub = gf.jacobian_spectra(cfg, params, x, depths=[2, 5])
  np.testing.assert_array_equal(sub.depths, [2, 5])
  np.testing.assert_allclose(sub.singular_values, full.singular_values[:, [1, 4]], rtol=1e-6)


def test_power_agrees_with_exact():
  cfg, params, x = _setup(width=24, in_dim=24)
  exact = gf.jacobian_spectra(cfg, params, x)
  power = gf.jacobian_spectra(cfg, params, x, method="power")
  assert power.singular_values is None and bool(jnp.all(power.converged))
  np.testing.assert_allclose(power.spectral_norm, exact.spectral_norm, rtol=1e-3)
  le = gf.layer_jacobian_norms(cfg, params, x, method="exact")
  for method in ("power", "lanczos"):
    lp, conv = gf.layer_jacobian_norms(cfg, params, x, method=method, return_converged=True)
    assert le.shape == (3, cfg.depth) and bool(jnp.all(conv))
    np.testing.assert_allclose(lp, le, rtol=1e-3)
  lanczos = gf.jacobian_spectra(cfg, params, x, method="lanczos")
  np.testing.assert_allclose(lanczos.spectral_norm, exact.spectral_norm, rtol=1e-4)


def test_layer_norms_closed_form():
  cfg, params, x = _setup(activation="relu", init="he_normal", sigma_w=None)
  norms = gf.layer_jacobian_norms(cfg, params, x, method="exact")
  _, trace = gf.models.mlp_forward(cfg, params, x)
  for l in range(cfg.depth):
    d = (np.asarray(trace.pre[l][1]) > 0).astype(np.float64)
    w = np.asarray(params["layers"][l]["w"], np.float64)
    assert float(norms[1, l]) == pytest.approx(np.linalg.norm(d[:, None] * w.T, 2), rel=1e-5)


def test_product_bound_bounds_the_spectral_norm():
  cfg, params, x = _setup()
  spec = gf.jacobian_spectra(cfg, params, x)
  bound = np.asarray(gf.measure.product_bound(cfg, params))
  assert np.all(np.asarray(spec.spectral_norm) <= bound[None] * (1 + 1e-5))
  np.testing.assert_allclose(gf.measure.weight_spectral_norms(params)[0],
                             np.linalg.norm(np.asarray(params["layers"][0]["w"]), 2), rtol=1e-5)


def test_overflow_is_reported_not_crashed():
  cfg, params, x = _setup(activation="relu", init="gaussian", sigma_w=400.0, depth=20, sigma_b=0.0)
  spec = gf.jacobian_spectra(cfg, params, x, depths=[1, 10, 20])
  first = np.asarray(spec.first_nonfinite_depth)
  assert np.all((first == 10) | (first == 20))  # 400^20 overflows float32, 400^10 may not


def test_depth_one_and_linear_orthogonal_in_float64():
  with jax.enable_x64(True):
    cfg = gf.MLPConfig(in_dim=16, width=16, depth=6, out_dim=1, activation="identity",
                       init="orthogonal", sigma_w=1.0, dtype="float64")
    params = gf.init_mlp(KEY, cfg)
    spec = gf.jacobian_spectra(cfg, params, np.ones((2, 16)))
    np.testing.assert_allclose(spec.singular_values, 1.0, atol=1e-12)
  cfg1, params1, x = _setup(depth=1)
  assert gf.jacobian_spectra(cfg1, params1, x).spectral_norm.shape == (3, 1)
  assert gf.layer_jacobian_norms(cfg1, params1, x).shape == (3, 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="arnoldi"), "unknown method"), (dict(tol=0.0), "tolerance > 0"),
    (dict(depths=[0, 3]), "depths in 1..5"), (dict(max_iter=0), "max_iter")])
def test_bad_arguments(kwargs, match):
  cfg, params, x = _setup()
  with pytest.raises(ValueError, match=match):
    gf.jacobian_spectra(cfg, params, x, **kwargs)


def test_batchnorm_and_wrong_widths_rejected():
  cfg, params, x = _setup(norm="batchnorm")
  with pytest.raises(ValueError, match="batchnorm"):
    gf.layer_jacobian_norms(cfg, params, x)
  cfg, params, x = _setup()
  with pytest.raises(ValueError, match="dense layers|expected layer"):
    gf.jacobian_spectra(cfg.replace(width=10), params, x)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "identity"])
def test_lanczos_equals_exact_on_rank_deficient_jacobians(activation):
  """He-initialised ReLU nets have rank-deficient J^T J (half the units off):
  Lanczos breaks down early there and must stop, not divide by beta ~ 0
  (it returned 1e9 where the exact norm is 2.6). Per layer and at every depth."""
  cfg = gf.MLPConfig(in_dim=32, width=32, depth=8, out_dim=2, activation=activation)
  params = gf.init_mlp(KEY, cfg)
  x = np.asarray(jax.random.normal(jax.random.key(1), (3, 32)))
  exact_layers = gf.layer_jacobian_norms(cfg, params, x, method="exact")
  lanczos_layers, conv = gf.layer_jacobian_norms(cfg, params, x, return_converged=True)
  np.testing.assert_allclose(lanczos_layers, exact_layers, rtol=1e-3)
  assert bool(jnp.all(conv))
  exact = gf.jacobian_spectra(cfg, params, x)
  lanczos = gf.jacobian_spectra(cfg, params, x, method="lanczos")
  np.testing.assert_allclose(lanczos.spectral_norm, exact.spectral_norm, rtol=1e-3)
  assert bool(jnp.all(lanczos.converged))


def test_lanczos_on_a_rank_one_matrix_is_exact_and_converged():
  from gradflow_jax.measure._linalg import lanczos_top_singular_value
  u = jax.random.normal(jax.random.key(3), (40,))
  v = jax.random.normal(jax.random.key(4), (30,))
  m = jnp.outer(u, v)  # one non-zero singular value, |u| |v|
  sigma, conv = lanczos_top_singular_value(lambda t: m @ t, lambda t: m.T @ t,
                                           jax.random.normal(KEY, (30,)), 20, 1e-6)
  assert float(sigma) == pytest.approx(float(jnp.linalg.norm(u) * jnp.linalg.norm(v)), rel=1e-5)
  assert bool(conv)


def test_one_lanczos_loop_with_and_without_reorthogonalization():
  """``_linalg.lanczos`` on a batch of rank-deficient matrices (half their
  columns zeroed, as a ReLU layer's Jacobian) held as a pytree of two blocks
  of different sizes: both ways give each block's top singular value from
  NumPy's SVD, converged; a NaN block is NaN and not converged."""
  from gradflow_jax.measure import _linalg
  rng = np.random.default_rng(0)
  mats = [rng.normal(size=(3, 12, 10)), rng.normal(size=(2, 8, 6))]
  for m in mats:
    m[..., ::2] = 0
  mats[1][1, 0, 1] = np.nan
  mats = [jnp.asarray(m, jnp.float32) for m in mats]
  op = lambda v: [jnp.einsum("bji,bjk,bk->bi", m, m, x) for m, x in zip(mats, v)]
  dot = lambda a, b: jnp.concatenate([jnp.sum(p * q, -1) for p, q in zip(a, b)])
  scale = lambda c, v: [v[0] * c[:3, None], v[1] * c[3:, None]]
  v0 = [jax.random.normal(KEY, (3, 10)), jax.random.normal(jax.random.key(1), (2, 6))]
  dim = jnp.asarray([10.0] * 3 + [6.0] * 2)
  with np.errstate(invalid="ignore"):
    want = np.concatenate([np.linalg.svd(np.nan_to_num(np.asarray(m)), compute_uv=False)[:, 0]
                           for m in mats])
  for reorth in (True, False):
    sigma, conv = _linalg.lanczos(op, v0, 12, 1e-5, dot=dot, scale=scale, dim=dim,
                                  reorthogonalize=reorth)
    np.testing.assert_allclose(np.asarray(sigma)[:4], want[:4], rtol=1e-4)
    assert np.asarray(conv)[:4].all()
    assert np.isnan(np.asarray(sigma)[4]) and not bool(conv[4])


def test_nonfinite_matrices_never_reach_lapack():
  """A Jacobian holding Inf/NaN (an overflowing sweep) gets NaN singular values,
  both ways, and its neighbours in the batch keep their exact values."""
  from gradflow_jax.measure import _linalg
  m = np.stack([np.diag([3.0, 2.0, 1.0]), np.full((3, 3), np.inf), np.eye(3)]).astype(np.float32)
  m[2, 0, 1] = np.nan
  for gram in (False, True):
    sv = np.asarray(_linalg.singular_values(jnp.asarray(m), gram=gram))
    np.testing.assert_allclose(sv[0], [3, 2, 1], rtol=1e-6)
    assert np.isnan(sv[1]).all() and np.isnan(sv[2]).all()
