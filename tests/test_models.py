"""Users' models (Flax linen, Flax NNX, plain JAX with taps) through the one
probed-model interface, against the built-in MLP and hand-computed
references; everyday Flax features (Dropout, BatchNorm, scan, remat, Embed)."""

import re

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
  act: str = "tanh"

  @nn.compact
  def __call__(self, x):
    for _ in range(3):
      x = getattr(nn, self.act)(nn.Dense(16)(x))
    return nn.Dense(3)(x)


class NnxMLP(nnx.Module):
  def __init__(self, rngs, act="tanh"):
    self.act = act
    self.hidden = nnx.List([nnx.Linear(6, 16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs),
                            nnx.Linear(16, 16, rngs=rngs)])
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    for layer in self.hidden:
      x = getattr(jax.nn, self.act)(layer(x))
    return self.out(x)


def plain_mlp(params, x):
  for i, l in enumerate(params["layers"][:-1]):
    x = jnp.tanh(gf.tap(f"z{i}", x @ l["w"] + l["b"][None], role="pre"))
    x = gf.tap(f"a{i}", x, role="post")
  return x @ params["layers"][-1]["w"] + params["layers"][-1]["b"][None]


def _linen_variables(params):
  return {"params": {f"Dense_{i}": {"kernel": l["w"], "bias": l["b"]}
                     for i, l in enumerate(params["layers"])}}


def _nnx_model(params, act="tanh"):
  model = NnxMLP(nnx.Rngs(0), act)
  for layer, p in zip(list(model.hidden) + [model.out], params["layers"]):
    layer.kernel[...], layer.bias[...] = p["w"], p["b"]
  return model


def _three_kinds():
  """model, (pre tap names), (post tap names): a_l is the next layer's input."""
  return {
      "linen": (gf.from_linen(LinenMLP(), _linen_variables(PARAMS)),
                [f"Dense_{i}" for i in range(3)], [f"Dense_{i}/input" for i in range(1, 4)]),
      "nnx": (gf.from_nnx(_nnx_model(PARAMS)), ["hidden/0", "hidden/1", "hidden/2"],
              ["hidden/1/input", "hidden/2/input", "out/input"]),
      "plain": (gf.probed(plain_mlp, PARAMS), ["z0", "z1", "z2"], ["a0", "a1", "a2"]),
      "builtin": (gf.mlp_model(CFG, PARAMS), [f"layer_{l}/pre" for l in range(3)],
                  [f"layer_{l}/post" for l in range(3)]),
  }


@pytest.mark.parametrize("kind", ["linen", "nnx", "plain", "builtin"])
def test_every_producer_measures_the_built_in_mlp_alike(kind):
  """The same network through four producers: the built-in statistics, to
  1e-5, with the activation read from the taps (never named by hand)."""
  model, pre, post = _three_kinds()[kind]
  ref = gf.flow_stats(CFG, PARAMS, X, Y)
  a = gf.analyze_model(model, X, Y, jacobians=False)  # the Jacobians are checked below
  s = a.stats
  idx = {n: i for i, n in enumerate(s.names)}
  ip, iq = [idx[n] for n in pre], [idx[n] for n in post]
  assert [s.activation_names[i] for i in ip] == ["tanh"] * 3
  np.testing.assert_allclose(s.tap_grad_norm[ip], ref.gradients.preact_grad_norm, rtol=1e-5)
  np.testing.assert_allclose(s.tap_grad_norm[iq], ref.gradients.postact_grad_norm, rtol=1e-5)
  np.testing.assert_allclose(s.activations.saturation_fraction[ip],
                             ref.activations.saturation_fraction)
  for field in ("mean", "std", "min", "max", "zero_fraction"):
    np.testing.assert_allclose(getattr(s.activations, field)[iq],
                               getattr(ref.activations, field), rtol=1e-5, atol=1e-7)
  assert float(s.global_norm) == pytest.approx(float(ref.gradients.global_norm), rel=1e-5)
  assert float(s.loss) == pytest.approx(float(ref.gradients.loss), rel=1e-6)
  # local Jacobians between layer inputs: d a_l / d a_(l-1) = diag(tanh'(z_l)) W_l^T
  jac = gf.tap_jacobian_norms(model, X, roles=("post",))
  _, trace = gf.models.mlp_forward(CFG, PARAMS, X)
  for l in (1, 2):
    d = 1 - np.tanh(np.asarray(trace.pre[l], np.float64)) ** 2
    w = np.asarray(PARAMS["layers"][l]["w"], np.float64)
    want = [np.linalg.norm(d[b][:, None] * w.T, 2) for b in range(8)]
    np.testing.assert_allclose(np.asarray(jac.norm)[:, jac.names.index(post[l])], want,
                               rtol=1e-4)
  assert bool(np.all(np.asarray(jac.converged)[:, 1:]))


def _cut_jacobian_reference(model, x, jac):
  """Exact local Jacobian norms per example: jacfwd of the cut forward, the
  blocks of each tap's sources stacked, SVD in float64."""
  from gradflow_jax.measure import _model_stats, _tap_jacobians
  info, shapes = _model_stats.discover(model, x)
  names = [i.name for i in info]
  f = _tap_jacobians._cut_forward(model.forward, model.params, x, names, True)
  full = jax.jit(jax.jacfwd(f))(_tap_jacobians._points(shapes, names, x, True))
  batch = x.shape[0]
  out = np.full((batch, len(names)), np.nan)
  for k, (n, sources) in enumerate(zip(names, jac.sources)):
    for b in range(batch):
      blocks = [np.asarray(full[n][s], np.float64)[b].reshape(
          -1, *np.shape(x if s == "<input>" else shapes[s])).reshape(
          int(np.prod(shapes[n].shape[1:])), batch, -1)[:, b] for s in sources]
      if blocks:
        out[b, k] = np.linalg.norm(np.concatenate(blocks, 1), 2)
  return out


class Attention(nn.Module):
  """One pre-LN attention block: q, k and v read the same tensor (parallel)."""
  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    q, k, v = nn.Dense(8)(h), nn.Dense(8)(h), nn.Dense(8)(h)
    att = jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", q, k) / jnp.sqrt(8.0), axis=-1)
    x = x + nn.Dense(8)(jnp.einsum("bqk,bkd->bqd", att, v))
    return nn.Dense(3)(jax.nn.relu(x).mean(axis=1))


def test_local_jacobians_match_jacfwd_on_parallel_branches():
  x = jax.random.normal(jax.random.key(3), (3, 4, 8))
  module = Attention()
  model = gf.from_linen(module, module.init(jax.random.key(0), x))
  jac = gf.tap_jacobian_norms(model, x)
  ref = _cut_jacobian_reference(model, x, jac)
  np.testing.assert_allclose(np.asarray(jac.norm), ref, rtol=1e-3)
  sources = dict(zip(jac.names, jac.sources))
  assert sources["Dense_1"] == sources["Dense_2"] == sources["Dense_0"] == ("Dense_0/input",)
  assert sources["Dense_3/input"] == ("Dense_2",)  # the latest of q, k, v (here v)
  assert jac.per_example
  # which taps feed which: tested one source per example (3 at a time) it is
  # the same matrix as tested one source at a time
  from gradflow_jax.measure import _model_stats, _tap_jacobians
  info, shapes = _model_stats.discover(model, x)
  reads, interact = _tap_jacobians._dependencies(model, x, info, True, (), shapes)
  alone = np.asarray(_tap_jacobians._hits(model.forward, model.params, x, info, True, (), 1))
  assert len(info) + 1 > 3 and not interact
  np.testing.assert_array_equal(reads, alone[:, :, 0])
  assert not alone[:, :, 1:].any()


def test_batchnorm_in_training_mode_couples_examples():
  class BN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.BatchNorm(use_running_average=False)(nn.Dense(8)(x)))
      x = nn.Dropout(0.5, deterministic=False)(x)
      return nn.Dense(3)(x)
  module = BN()
  variables = module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, X)
  assert "batch_stats" in variables
  model = gf.from_linen(module, variables)
  s = gf.model_flow_stats(model, X, Y)
  assert np.isfinite(float(s.global_norm))
  assert set(jax.tree.leaves(jax.tree.map(lambda _: 1, s.param_grad_norms))) == {1}
  jac = gf.tap_jacobian_norms(model, X)
  assert not jac.per_example
  ref = _cut_jacobian_reference(model, X, jac)  # per-example blocks of the batch operator
  assert np.all(np.asarray(jac.norm)[:, 2] >= ref[:, 2] * (1 - 1e-4))  # batch norm >= blocks


def _scanned(params, x):
  def layer(h, p):
    z = gf.tap("z", h @ p["w"], role="pre", activation="tanh")
    return jnp.tanh(z), None
  h, _ = jax.lax.scan(layer, x, params)
  return h.sum(-1, keepdims=True) * jnp.ones((1, 3))


def _unrolled(params, x):
  for i in range(params["w"].shape[0]):
    x = jnp.tanh(gf.tap(f"z/layer_{i}", x @ params["w"][i], role="pre", activation="tanh"))
  return x.sum(-1, keepdims=True) * jnp.ones((1, 3))


def test_taps_inside_lax_scan_and_remat_equal_the_unrolled_model():
  params = {"w": jax.random.normal(jax.random.key(5), (4, 6, 6)) / jnp.sqrt(6.0)}
  scan = gf.model_flow_stats(gf.probed(_scanned, params), X, Y)
  # checkpoint applied while the model runs (as nn.remat and nnx.remat do)
  ckpt = gf.model_flow_stats(gf.probed(lambda p, x: jax.checkpoint(_unrolled)(p, x), params),
                             X, Y)
  flat = gf.model_flow_stats(gf.probed(_unrolled, params), X, Y)
  assert scan.names == flat.names == ckpt.names == tuple(f"z/layer_{i}" for i in range(4))
  for s in (scan, ckpt):
    np.testing.assert_allclose(s.tap_grad_norm, flat.tap_grad_norm, rtol=1e-5)
    np.testing.assert_allclose(s.activations.std, flat.activations.std, rtol=1e-5)
  assert jax.lax.scan.__module__.startswith("jax")  # the routing is undone afterwards


def test_taps_inside_reversed_and_nested_scans_equal_the_unrolled_model():
  """Each scanned layer gets its own perturbation (handed in as the scan's
  xs): dL/d tap per layer as jax.grad gives it on the unrolled model."""
  w = jax.random.normal(jax.random.key(6), (2, 2, 6, 6)) / jnp.sqrt(6.0)
  readout = jax.random.normal(jax.random.key(7), (6, 3))
  layer = lambda h, w: (jnp.tanh(gf.tap("z", h @ w, role="pre")), None)

  def reversed_scan(p, x):
    return jax.lax.scan(layer, x, p.reshape(4, 6, 6), reverse=True)[0] @ readout

  def reversed_flat(p, x):
    for i in (3, 2, 1, 0):
      x = jnp.tanh(gf.tap(f"z/layer_{i}", x @ p.reshape(4, 6, 6)[i], role="pre"))
    return x @ readout

  def nested_scan(p, x):
    return jax.lax.scan(lambda h, wi: (jax.lax.scan(layer, h, wi)[0], None), x, p)[0] @ readout

  def nested_flat(p, x):
    for i in range(2):
      for j in range(2):
        x = jnp.tanh(gf.tap(f"z/layer_{j}/layer_{i}", x @ p[i, j], role="pre"))
    return x @ readout

  for scanned, flat in ((reversed_scan, reversed_flat), (nested_scan, nested_flat)):
    s = gf.model_flow_stats(gf.probed(scanned, w), X, Y)
    f = gf.model_flow_stats(gf.probed(flat, w), X, Y)
    assert sorted(s.names) == sorted(f.names) and len(s.names) == 4
    order = [s.names.index(n) for n in f.names]
    np.testing.assert_allclose(np.asarray(s.tap_grad_norm)[order], f.tap_grad_norm, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s.activations.std)[order], f.activations.std,
                               rtol=1e-5)
    g = np.sort(np.asarray(f.tap_grad_norm))
    assert np.all(np.diff(g) > 1e-3 * g[-1]) and g[0] > 0  # the layers differ


class LinenBlock(nn.Module):
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
  linen = gf.model_flow_stats(gf.from_linen(LinenBlock(), variables, auto=False), x, Y[:4])
  plain = gf.model_flow_stats(gf.probed(plain_block, variables["params"]), x, Y[:4])
  assert linen.names == plain.names == ("attn_out", "block_out")
  np.testing.assert_allclose(linen.tap_grad_norm, plain.tap_grad_norm, rtol=1e-4)
  np.testing.assert_allclose(linen.activations.std, plain.activations.std, rtol=1e-4)


def test_tap_is_free_outside_an_analysis_and_no_taps_is_an_error():
  assert gf.tap("x", 3.0) == 3.0
  with pytest.raises(ValueError, match="at least one tapped layer"):
    gf.model_flow_stats(gf.probed(lambda p, x: x @ p, jnp.ones((6, 3))), X, Y)
  with pytest.raises(ValueError, match="activation names for taps"):
    gf.model_flow_stats(gf.probed(plain_mlp, PARAMS), X, Y, activations={"nope": "relu"})


def _shift_bias(params, layer, by):
  p = jax.tree.map(lambda a: a, params)
  p["layers"][layer] = {**p["layers"][layer], "b": p["layers"][layer]["b"] + by}
  return p


def _findings(model, x=X, y=Y):
  return {f.kind: f for f in gf.analyze_model(model, x, y, jacobians=False).findings}


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_dead_relu_layer_found_on_the_right_layer_without_naming_activations(kind):
  params = _shift_bias(gf.init_mlp(jax.random.key(0), CFG.replace(activation="relu")), 1, -3.0)
  model = (gf.from_linen(LinenMLP("relu"), _linen_variables(params)) if kind == "linen"
           else gf.from_nnx(_nnx_model(params, "relu")))
  a = gf.analyze_model(model, X, Y, jacobians=False)
  found = {f.kind: f for f in a.findings}
  dead_layer = "Dense_1" if kind == "linen" else "hidden/1"
  taps = found["dead_units"].evidence["taps"]
  assert dead_layer in taps and taps[0] == dead_layer  # not layer 0; layer 2 follows from it
  dead = dict(zip(a.stats.names, np.asarray(a.stats.activations.dead_fraction)))
  assert dead[dead_layer] > 0.9 and dead[dead_layer] == max(dead.values())
  # in a notebook: the analysis shows as HTML (findings, then taps) and its
  # figure is returned, never left open in pyplot
  import matplotlib.figure
  import matplotlib.pyplot as plt
  import html
  page = a._repr_html_()
  messages = [html.escape(f.message) for f in a.findings]
  assert all(m in page for m in messages) and all(n in page for n in a.stats.names)
  assert page.index(messages[0]) < page.index("<table>")
  before = plt.get_fignums()
  assert isinstance(gf.plots.model_taps(a), matplotlib.figure.Figure)
  assert plt.get_fignums() == before


def test_saturated_tanh_net_is_flagged():
  params = jax.tree.map(lambda a: 4.0 * a, PARAMS)
  found = _findings(gf.from_linen(LinenMLP(), _linen_variables(params)))
  assert "saturation" in found


class ResidualLN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Dense(32, kernel_init=nn.initializers.he_normal())(x)
    for _ in range(8):
      h = nn.relu(nn.Dense(32, kernel_init=nn.initializers.he_normal())(nn.LayerNorm()(x)))
      x = x + nn.Dense(32, kernel_init=nn.initializers.he_normal())(h)
    return nn.Dense(3)(nn.LayerNorm()(x))


def test_healthy_residual_layernorm_relu_net_gets_no_warning():
  module = ResidualLN()
  x = jax.random.normal(jax.random.key(4), (32, 6))
  model = gf.from_linen(module, module.init(jax.random.key(0), x))
  found = gf.analyze_model(model, x, jnp.arange(32) % 3, jacobians=False).findings
  assert [f for f in found if f.severity != "info"] == []


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


def test_importing_the_library_leaves_the_matplotlib_backend_alone():
  import subprocess
  import sys
  code = ("import matplotlib; matplotlib.use('svg'); import gradflow_jax, gradflow_jax.render._plots; "
          "print(matplotlib.get_backend())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "svg"


def test_a_users_own_perturb_points_are_taps_with_their_values_and_gradients():
  """Flax's own intermediate-gradient mechanism, `self.perturb(name, h)`, in
  a linen and an NNX model (one nested in a submodule): each point is a tap
  named by module path, its std and ||dL/dh|| equal a direct computation
  (jax.grad with respect to h), and the user's NNX model is left as it was."""
  from flax import linen as nn
  from flax import nnx
  x = jax.random.normal(jax.random.key(0), (6, 5))
  y = jnp.arange(6) % 3

  class Block(nn.Module):
    @nn.compact
    def __call__(self, h):
      return self.perturb("z", nn.Dense(8)(h) * 0.5)

  class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = self.perturb("hidden", jnp.tanh(nn.Dense(8)(x)))
      return nn.Dense(3)(jnp.tanh(Block()(h)))

  class NNXNet(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(5, 8, rngs=rngs)
      self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.l2(self.perturb("hidden", jnp.tanh(self.l1(x))))

  def reference(w1, b1, w2, b2):
    h = jnp.tanh(x @ w1 + b1[None])
    g = jax.grad(lambda h: gf.loss_value("cross_entropy", h @ w2 + b2[None], y))(h)
    return float(jnp.std(h, ddof=1)), float(jnp.linalg.norm(g))

  module = LinenNet()
  variables = module.init(jax.random.key(1), x)
  stats = gf.model_flow_stats(gf.from_linen(module, variables), x, y)
  assert "hidden" in stats.names and "Block_0/z" in stats.names
  assert "Block_0/Dense_0/input" not in stats.names  # the perturbed value is that input
  p = variables["params"]
  w1, b1 = p["Dense_0"]["kernel"], p["Dense_0"]["bias"]
  h = jnp.tanh(x @ w1 + b1[None])
  z = (h @ p["Block_0"]["Dense_0"]["kernel"] + p["Block_0"]["Dense_0"]["bias"][None]) * 0.5
  gz = jax.grad(lambda z: gf.loss_value("cross_entropy", jnp.tanh(z) @ p["Dense_1"]["kernel"]
                                        + p["Dense_1"]["bias"][None], y))(z)
  i, k = stats.names.index("hidden"), stats.names.index("Block_0/z")
  assert stats.roles[i] == "tap"
  np.testing.assert_allclose(stats.tap_grad_norm[k], jnp.linalg.norm(gz), rtol=1e-5)
  np.testing.assert_allclose(stats.activations.std[k], jnp.std(z, ddof=1), rtol=1e-5)
  block = lambda h: (h @ p["Block_0"]["Dense_0"]["kernel"]
                     + p["Block_0"]["Dense_0"]["bias"][None]) * 0.5
  gh = jax.grad(lambda h: gf.loss_value("cross_entropy", jnp.tanh(block(h)) @ p["Dense_1"][
      "kernel"] + p["Dense_1"]["bias"][None], y))(h)
  np.testing.assert_allclose([stats.activations.std[i], stats.tap_grad_norm[i]],
                             [jnp.std(h, ddof=1), jnp.linalg.norm(gh)], rtol=1e-5)

  net = NNXNet(nnx.Rngs(2))
  nstats = gf.model_flow_stats(gf.from_nnx(net), x, y)
  j = nstats.names.index("hidden")
  std, gnorm = reference(net.l1.kernel[...], net.l1.bias[...], net.l2.kernel[...],
                         net.l2.bias[...])
  np.testing.assert_allclose([nstats.activations.std[j], nstats.tap_grad_norm[j]], [std, gnorm],
                             rtol=1e-5)
  assert type(net) is NNXNet and not any(isinstance(v, nnx.Perturbation)
                                         for _, v in nnx.iter_graph(net))
  # the same point in a user's own training step
  _, _, flow = gf.nnx_value_and_grad(lambda m, x, y: gf.loss_value("cross_entropy", m(x), y))(
      net, x, y)
  np.testing.assert_allclose(flow.tap_grad_norm[flow.names.index("hidden")], gnorm, rtol=1e-5)
  assert type(net) is NNXNet and not any(isinstance(v, nnx.Perturbation)
                                         for _, v in nnx.iter_graph(net))


def test_output_picks_by_key_or_index_and_refuses_what_it_cannot_pick():
  from gradflow_jax.models._flax import select_output
  a, b = jnp.zeros(2), jnp.ones(3)
  assert select_output((a, b), "1") is b and select_output((a, b), -1) is b  # CLI strings too
  assert select_output({"logits": a, "aux": b}, "aux") is b
  for out, output, said in (((a, b), "2", "index of the model's 2 outputs"),
                            ((a, b), "aux", "index"), ({"logits": a}, "x", "one of ['logits']"),
                            (a, "/tmp/out", "returns one")):
    with pytest.raises(ValueError, match=re.escape(said)):
      select_output(out, output)
