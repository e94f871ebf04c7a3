"""Built-in MLP: layout, forward against NumPy, .npz loading."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow_jax as gf
from gradflow_jax.models import _mlp
from helpers import np_act, np_mlp

KEY = jax.random.key(0)
X = np.asarray(jax.random.normal(jax.random.key(1), (8, 6)))


def _cfg(**kw):
  base = dict(in_dim=6, width=16, depth=4, out_dim=3, activation="tanh")
  return gf.MLPConfig(**{**base, **kw})


def test_layout_plain_and_residual():
  params = gf.init_mlp(KEY, _cfg())
  assert [l["w"].shape for l in params["layers"]] == [(6, 16)] + [(16, 16)] * 3 + [(16, 3)]
  res = gf.init_mlp(KEY, _cfg(residual=True, norm="layernorm", activation="prelu"))
  assert len(res["layers"]) == 1 + 2 * 3 + 1
  assert len(res["norm"]) == 4 and len(res["prelu"]) == 4


@pytest.mark.parametrize("kw", [
    dict(), dict(activation="relu", sigma_b=0.3), dict(residual=True, activation="gelu"),
    dict(norm="layernorm", activation="silu"), dict(norm="batchnorm", activation="sigmoid"),
    dict(activation="prelu", residual=True, norm="layernorm"),
    dict(activation="leaky_relu", leaky_slope=0.2, init="torch_default")])
def test_forward_matches_numpy(kw):
  cfg = _cfg(**kw)
  params = gf.init_mlp(KEY, cfg)
  if cfg.activation == "prelu":
    params["prelu"] = [jnp.float32(0.1 * (l + 1)) for l in range(cfg.depth)]
  out, trace = gf.models.mlp_forward(cfg, params, X)
  slope = cfg.leaky_slope
  act = functools.partial(np_act, cfg.activation, alpha=cfg.elu_alpha)
  if cfg.activation == "prelu":
    act = lambda z, s: np_act("prelu", z, slope=s)
  elif cfg.activation == "leaky_relu":
    act = functools.partial(np_act, "leaky_relu", slope=slope)
  ref_out, pres, posts, hiddens = np_mlp(
      params, X, act, residual=cfg.residual, norm=cfg.norm,
      slopes=params.get("prelu"))
  tol = dict(rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out, ref_out, **tol)
  np.testing.assert_allclose(trace.pre, np.stack(pres), **tol)
  np.testing.assert_allclose(trace.post, np.stack(posts), **tol)
  np.testing.assert_allclose(trace.hidden, np.stack(hiddens), **tol)


def test_mean_field_gaussian_init_scales():
  cfg = _cfg(width=512, in_dim=512, init="gaussian", sigma_w=1.5, sigma_b=0.2)
  params = gf.init_mlp(KEY, cfg)
  w = np.concatenate([np.ravel(l["w"]) for l in params["layers"][1:-1]])
  b = np.concatenate([np.ravel(l["b"]) for l in params["layers"]])
  assert w.var() * 512 == pytest.approx(1.5**2, rel=0.01)
  assert b.std() == pytest.approx(0.2, rel=0.1)  # 1539 draws: std error 1.8%


def test_npz_roundtrip_and_errors(tmp_path):
  cfg = _cfg(norm="layernorm")
  params = gf.init_mlp(KEY, cfg)
  path = tmp_path / "w.npz"
  np.savez(path, **_mlp.params_to_arrays(params))
  loaded = gf.models.load_npz(path, cfg)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)
  arrays = _mlp.params_to_arrays(params)
  arrays["w1"] = arrays["w1"][:, :5]
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=r"expected w1 of shape \(16, 16\)"):
    gf.models.load_npz(path, cfg)
  arrays["w1"] = np.zeros((16, 16))
  arrays["w0"] = np.zeros((16, 6))
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match="PyTorch"):
    gf.models.load_npz(path, cfg)
  np.savez(path, w0=np.zeros((6, 16)))
  with pytest.raises(ValueError, match="expected keys"):
    gf.models.load_npz(path, cfg)
  with pytest.raises(ValueError, match="readable"):
    gf.models.load_npz(tmp_path / "missing.npz", cfg)


@pytest.mark.parametrize("kw, match", [
    (dict(depth=0), "depth"), (dict(width=-3), "width"), (dict(activation="nope"), "activation"),
    (dict(init="nope"), "initializer"), (dict(norm="groupnorm"), "norm"),
    (dict(sigma_w=0.0), "sigma_w"), (dict(dtype="int8"), "dtype")])
def test_bad_config(kw, match):
  with pytest.raises(ValueError, match=match):
    _cfg(**kw)


def test_wrong_input_shape_and_params():
  cfg = _cfg()
  params = gf.init_mlp(KEY, cfg)
  with pytest.raises(ValueError, match=r"expected inputs of shape \(batch, 6\)"):
    gf.models.mlp_forward(cfg, params, np.zeros((8, 5)))
  with pytest.raises(ValueError, match="dense layers"):
    gf.models.mlp_forward(_cfg(depth=5), params, X)
