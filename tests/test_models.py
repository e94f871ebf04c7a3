"""Users' models (Flax linen, Flax NNX, plain JAX with taps) against the
built-in MLP and hand-computed references; the diagnosis of broken models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import gradflow_jax as gf

X = jax.random.normal(jax.random.key(1), (8, 6))
Y = jnp.arange(8) % 3
CFG = gf.MLPConfig(in_dim=6, width=16, depth=3, out_dim=3, activation="tanh", sigma_b=0.1)
PARAMS = gf.init_mlp(jax.random.key(0), CFG)


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for _ in range(3):
      x = jnp.tanh(nn.Dense(16)(x))
    return nn.Dense(3)(x)


class NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.List([nnx.Linear(6, 16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs),
                            nnx.Linear(16, 16, rngs=rngs)])
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    for layer in self.hidden:
      x = jnp.tanh(layer(x))
    return self.out(x)


def plain_mlp(params, x):
  for i, l in enumerate(params["layers"][:-1]):
    x = jnp.tanh(gf.tap(f"z{i}", x @ l["w"] + l["b"][None]))
  return x @ params["layers"][-1]["w"] + params["layers"][-1]["b"][None]


def _three_kinds():
  variables = {"params": {f"Dense_{i}": {"kernel": l["w"], "bias": l["b"]}
                          for i, l in enumerate(PARAMS["layers"])}}
  model = NnxMLP(nnx.Rngs(0))
  for layer, p in zip(list(model.hidden) + [model.out], PARAMS["layers"]):
    layer.kernel[...], layer.bias[...] = p["w"], p["b"]
  nnx_forward, state = gf.from_nnx(model)
  return {"linen": (gf.from_linen(LinenMLP()), variables, [f"Dense_{i}" for i in range(4)]),
          "nnx": (nnx_forward, state, ["hidden/0", "hidden/1", "hidden/2", "out"]),
          "plain": (gf.probed(plain_mlp), PARAMS, ["z0", "z1", "z2"])}


@pytest.mark.parametrize("kind", ["linen", "nnx", "plain"])
def test_user_models_equal_the_built_in(kind):
  forward, params, names = _three_kinds()[kind]
  ref = gf.flow_stats(CFG, PARAMS, X, Y)
  s = gf.model_flow_stats(forward, params, X, Y, activations={n: "tanh" for n in names[:3]})
  assert s.names[:len(names)] == tuple(names)
  np.testing.assert_allclose(s.tap_grad_norm[:3], ref.gradients.preact_grad_norm, rtol=1e-5)
  np.testing.assert_allclose(s.activations.saturation_fraction[:3],
                             ref.activations.saturation_fraction)
  assert float(s.global_norm) == pytest.approx(float(ref.gradients.global_norm), rel=1e-5)
  assert float(s.loss) == pytest.approx(float(ref.gradients.loss), rel=1e-6)
  _, trace = gf.mlp_forward(CFG, PARAMS, X)
  z = np.asarray(trace.pre)
  np.testing.assert_allclose(s.activations.std[:3], z.reshape(3, -1).std(axis=1, ddof=1), rtol=1e-4)
  # per-tap Jacobian norms: d z_l / d z_(l-1) = W_l^T diag(tanh'(z_(l-1))), batch max
  jac = gf.tap_jacobian_norms(forward, params, X)
  d = 1 - np.tanh(z[0]) ** 2
  w = np.asarray(PARAMS["layers"][1]["w"], np.float64)
  want = max(np.linalg.norm(w.T * d[b][None, :], 2) for b in range(8))
  assert float(jac[1]) == pytest.approx(want, rel=1e-4)


def _conv(x, w, b):
  out = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return out + b[None, None, None, :]


class LinenCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = gf.tap("act1", nn.relu(nn.Conv(4, (3, 3))(x)))
    x = gf.tap("act2", nn.relu(nn.Conv(4, (3, 3))(x)))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_cnn_taps_against_hand_computed_gradients():
  x = jax.random.normal(jax.random.key(2), (4, 6, 6, 1))
  variables = LinenCNN().init(jax.random.key(0), x)
  p = variables["params"]
  s = gf.model_flow_stats(gf.from_linen(LinenCNN()), variables, x, Y[:4])
  assert s.names == ("Conv_0", "act1", "Conv_1", "act2", "Dense_0")

  def by_hand(eps):  # the same network, written out, with explicit perturbations
    z1 = _conv(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"]) + eps["Conv_0"]
    a1 = jax.nn.relu(z1) + eps["act1"]
    z2 = _conv(a1, p["Conv_1"]["kernel"], p["Conv_1"]["bias"]) + eps["Conv_1"]
    a2 = jax.nn.relu(z2) + eps["act2"]
    out = a2.reshape(4, -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None]
    return gf.loss_value("cross_entropy", out + eps["Dense_0"], Y[:4]), (z1, a1)

  eps = {"Conv_0": jnp.zeros((4, 6, 6, 4)), "act1": jnp.zeros((4, 6, 6, 4)),
         "Conv_1": jnp.zeros((4, 6, 6, 4)), "act2": jnp.zeros((4, 6, 6, 4)),
         "Dense_0": jnp.zeros((4, 3))}
  g, (z1, a1) = jax.grad(by_hand, has_aux=True)(eps)
  np.testing.assert_allclose(s.tap_grad_norm, [np.linalg.norm(g[n]) for n in s.names], rtol=1e-5)
  a1 = np.asarray(a1)
  assert float(s.activations.zero_fraction[1]) == pytest.approx(np.mean(a1 == 0))
  dead = np.mean(np.all(a1.reshape(-1, 4) == 0, axis=0))
  assert float(s.activations.dead_fraction[1]) == pytest.approx(dead)


class LinenBlock(nn.Module):
  """A pre-LayerNorm transformer block: attention and MLP, each residual."""
  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    q, k, v = nn.Dense(8)(h), nn.Dense(8)(h), nn.Dense(8)(h)
    att = jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", q, k) / jnp.sqrt(8.0), axis=-1)
    x = gf.tap("attn_out", x + nn.Dense(8)(jnp.einsum("bqk,bkd->bqd", att, v)))
    h = nn.gelu(nn.Dense(16)(nn.LayerNorm()(x)))
    return gf.tap("block_out", x + nn.Dense(8)(h)).mean(axis=1)[:, :3]


def plain_block(p, x):
  def ln(v, q):
    m, s = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - m) / jnp.sqrt(s + 1e-6) * q["scale"][None, None] + q["bias"][None, None]
  dense = lambda v, q: v @ q["kernel"] + q["bias"][None, None]
  h = ln(x, p["LayerNorm_0"])
  q, k, v = (dense(h, p[f"Dense_{i}"]) for i in range(3))
  att = jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", q, k) / jnp.sqrt(8.0), axis=-1)
  x = gf.tap("attn_out", x + dense(jnp.einsum("bqk,bkd->bqd", att, v), p["Dense_3"]))
  h = jax.nn.gelu(dense(ln(x, p["LayerNorm_1"]), p["Dense_4"]))
  return gf.tap("block_out", x + dense(h, p["Dense_5"])).mean(axis=1)[:, :3]


def test_transformer_block_linen_equals_plain_jax():
  x = jax.random.normal(jax.random.key(3), (4, 5, 8))
  variables = LinenBlock().init(jax.random.key(0), x)
  linen = gf.model_flow_stats(gf.from_linen(LinenBlock(), auto=False), variables, x, Y[:4])
  plain = gf.model_flow_stats(gf.probed(plain_block), variables["params"], x, Y[:4])
  assert linen.names == plain.names == ("attn_out", "block_out")
  np.testing.assert_allclose(linen.tap_grad_norm, plain.tap_grad_norm, rtol=1e-4)
  np.testing.assert_allclose(linen.activations.std, plain.activations.std, rtol=1e-4)
  auto = gf.model_flow_stats(gf.from_linen(LinenBlock()), variables, x, Y[:4])
  assert len(auto.names) == 8 and "Dense_0" in auto.names  # 6 Dense outputs + 2 taps


def test_tap_is_free_outside_an_analysis_and_no_taps_is_an_error():
  assert gf.tap("x", 3.0) == 3.0
  with pytest.raises(ValueError, match="at least one tapped layer"):
    gf.model_flow_stats(gf.probed(lambda p, x: x @ p), jnp.ones((6, 3)), X, Y)


BASE = dict(in_dim=32, width=32, out_dim=10)
XD = jax.random.normal(jax.random.key(4), (48, 32))
YD = jnp.arange(48) % 10


def _kinds(cfg, edit=None):
  params = gf.init_mlp(jax.random.key(0), cfg)
  if edit:
    edit(params)
  return {f.kind for f in gf.diagnose(cfg, params, XD, YD)}


def _negative_biases(p):
  for layer in p["layers"][:-1]:
    layer["b"] = layer["b"] - 3.0


@pytest.mark.parametrize("cfg, edit, expected", [
    (gf.MLPConfig(**BASE, depth=20, activation="sigmoid"), None, "vanishing_gradients"),
    (gf.MLPConfig(**BASE, depth=6, activation="relu"), _negative_biases, "dead_units"),
    (gf.MLPConfig(**BASE, depth=16, activation="relu", init="gaussian", sigma_w=3.0), None,
     "exploding_gradients"),
    (gf.MLPConfig(**BASE, depth=30, activation="relu", init="xavier_normal"), None,
     "init_mismatch"),
])
def test_broken_models_are_diagnosed(cfg, edit, expected):
  assert expected in _kinds(cfg, edit)


def test_healthy_model_gets_no_warning():
  cfg = gf.MLPConfig(**BASE, depth=30, activation="relu", init="he_normal", norm="layernorm",
                     residual=True)
  assert _kinds(cfg) == set()


def test_rnn_with_large_weights_is_diagnosed():
  cfg = gf.RNNConfig(in_dim=4, hidden=32, activation="tanh", scale=3.0)
  xs = jax.random.normal(jax.random.key(2), (30, 4, 4))
  kinds = {f.kind for f in gf.diagnose_rnn(cfg, gf.init_rnn(jax.random.key(0), cfg), xs)}
  assert "exploding_gradients_rnn" in kinds


def test_diagnose_model_finds_dead_units_in_a_linen_net():
  variables = {"params": {f"Dense_{i}": {"kernel": l["w"], "bias": l["b"] - (5.0 if i < 3 else 0)}
                          for i, l in enumerate(PARAMS["layers"])}}

  class Relu(nn.Module):
    @nn.compact
    def __call__(self, x):
      for i in range(3):
        x = gf.tap(f"act{i}", nn.relu(nn.Dense(16)(x)))
      return nn.Dense(3)(x)

  kinds = {f.kind for f in gf.diagnose_model(gf.from_linen(Relu()), variables, X, Y)}
  assert "dead_units" in kinds
