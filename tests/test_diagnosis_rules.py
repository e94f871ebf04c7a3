"""The diagnosis rules on the cases where they used to loop, miss or
contradict themselves: each case with the findings and fixes it must give."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import gradflow_jax as gf

X = jax.random.normal(jax.random.key(1), (32, 16))
Y = jax.random.randint(jax.random.key(2), (32,), 0, 4)


def _diagnose(depth=30, **kw):
  cfg = gf.MLPConfig(in_dim=16, width=32, out_dim=4, depth=depth, **kw)
  return gf.diagnose(cfg, gf.init_mlp(jax.random.key(0), cfg), X, Y)


def _directions(found):
  return {f.evidence.get("weight_scale") for f in found} - {None}


def test_critical_orthogonal_tanh_gets_no_init_advice():
  # Pennington et al. 2017: orthogonal tanh at sigma_w = 1, sigma_b = 0 is critical
  found = _diagnose(activation="tanh", init="orthogonal", sigma_w=1.0)
  assert not {"init_mismatch", "exploding_jacobian", "vanishing_jacobian"} & {f.kind for f in found}


def test_torch_gain_for_tanh_is_off_critical_and_the_fix_is_the_critical_sigma_w():
  found = _diagnose(activation="tanh", init="xavier_uniform", sigma_w=5 / 3)
  init = [f for f in found if f.kind == "init_mismatch"]
  assert len(init) == 1 and init[0].evidence["chi1"] == pytest.approx(1.21, abs=0.01)
  assert "set sigma_w to 1," in init[0].fix and init[0].evidence["weight_scale"] == "decrease"
  assert init[0].evidence["critical_sigma_w"] == pytest.approx(1.0, abs=1e-4)
  assert _directions(found) == {"decrease"}


@pytest.mark.parametrize("activation, init, sigma_w", [
    ("tanh", "gaussian", 0.5), ("relu", "gaussian", 2.0),
    ("silu", "he_normal", None)])  # SiLU under He: q* -> 0, chi_1 = 0.5, the signal collapses
def test_no_contradictory_fixes_in_one_run(activation, init, sigma_w):
  found = _diagnose(depth=20, activation=activation, init=init, sigma_w=sigma_w)
  assert len(_directions(found)) <= 1, [(f.kind, f.fix) for f in found]
  assert any(f.kind == "init_mismatch" for f in found)


class TanhMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for _ in range(30):  # sigma_w^2 = 4: chaotic, saturated
      x = jnp.tanh(nn.Dense(32, kernel_init=nn.initializers.normal(2.0 / np.sqrt(x.shape[-1])))(x))
    return nn.Dense(4)(x)


class ZeroHeadGelu(nn.Module):
  @nn.compact
  def __call__(self, x):
    for _ in range(6):
      x = nn.gelu(nn.Dense(32, kernel_init=nn.initializers.he_normal())(x), approximate=False)
    return nn.Dense(4, kernel_init=nn.initializers.zeros)(x)


def _analyze(module, x=X, y=Y, **kw):
  variables = module.init(jax.random.key(0), x)
  return gf.analyze_model(gf.from_linen(module, variables), x, y, **kw)


def test_user_model_gets_the_jacobian_and_saturation_findings():
  r = _analyze(TanhMLP(), jacobians=False)
  kinds = {f.kind for f in r.findings}
  assert {"saturation", "exploding_jacobian"} <= kinds
  assert r.input_jacobian[0] == "Dense_30/input" and np.median(r.input_jacobian[1]) > 100


def test_zero_head_is_explained_not_called_vanishing():
  kinds = {f.kind for f in _analyze(ZeroHeadGelu(), jacobians=False).findings}
  assert "zero_output_layer" in kinds
  assert not kinds & {"vanishing_gradients", "dead_units", "signal_collapse"}


def test_nan_input_and_bad_labels_name_the_cause():
  r = _analyze(ZeroHeadGelu(), x=X.at[3, 2].set(jnp.nan), jacobians=False)
  assert r.findings[0].kind == "nonfinite_inputs" and "1 NaN/Inf" in r.findings[0].message
  assert not any("learning rate" in f.fix for f in r.findings)
  r = _analyze(ZeroHeadGelu(), y=Y + 2, jacobians=False)
  assert r.findings[0].kind == "labels_out_of_range" and "4 outputs" in r.findings[0].message


def test_rnn_bound_is_context_not_a_verdict():
  # sigmoid, ||W|| = 6: gamma ||W|| = 1.5 > 1 allows growth, yet the norms vanish
  cfg = gf.RNNConfig(in_dim=4, hidden=32, activation="sigmoid", scale=6.0)
  xs = jax.random.normal(jax.random.key(2), (100, 4, 4))
  found = gf.diagnose_rnn(cfg, gf.init_rnn(jax.random.key(0), cfg), xs)
  kinds = [f.kind for f in found]
  assert kinds == ["vanishing_gradients_rnn"], kinds
  assert "necessary, not sufficient" in found[0].message


def test_examples_collapsed_onto_one_direction_are_not_called_dying_units():
  """He-ReLU at depth 30, width 64: deep in the net the examples are nearly
  collinear (mean cosine 0.99 at the last layer), so units are off on the
  whole batch, but as many are on for all of it: batch_collapse, not
  dead_units. A bias of -3 on one layer is dying units, on that layer."""
  cfg = gf.MLPConfig(64, 64, 30, 10, activation="relu", init="he_normal")
  params = gf.init_mlp(jax.random.key(0), cfg)
  x = jax.random.normal(jax.random.key(1), (64, 64))
  y = jnp.arange(64) % 10
  _, trace = gf.models.mlp_forward(cfg, params, x)
  a = np.asarray(trace.post[-1])
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  assert (a @ a.T)[np.triu_indices(64, 1)].mean() > 0.95  # the premise: collinear examples
  kinds = {f.kind: f for f in gf.diagnose(cfg, params, x, y)}
  assert "batch_collapse" in kinds and "dead_units" not in kinds
  z = np.asarray(trace.pre[-1])
  assert kinds["batch_collapse"].evidence["always_active_fraction"] >= 0.1
  assert (z > 0).all(0).mean() > 0.1  # numpy: units active on every example exist
  shifted = jax.tree.map(lambda v: v, params)
  shifted["layers"][1] = {**shifted["layers"][1], "b": shifted["layers"][1]["b"] - 3.0}
  small = gf.MLPConfig(64, 64, 4, 10, activation="relu", init="he_normal")
  shallow = {"layers": shifted["layers"][:4] + [params["layers"][-1]]}
  found = {f.kind: f for f in gf.diagnose(small, shallow, x, y)}
  assert "dead_units" in found and 1 in found["dead_units"].layers
  assert "batch_collapse" not in found


def test_unconverged_jacobians_are_marked_with_a_fix_the_caller_can_apply():
  """Two Lanczos steps on width-24 layers cannot converge: the finding says
  which option raises them, and analyze_model takes that option; the
  default steps converge on the same model."""
  cfg = gf.MLPConfig(in_dim=12, width=24, depth=3, out_dim=4, activation="tanh")
  model = gf.mlp_model(cfg, gf.init_mlp(jax.random.key(0), cfg))
  x, y = jax.random.normal(jax.random.key(1), (6, 12)), jnp.arange(6) % 4
  short = gf.analyze_model(model, x, y, infer=False, jacobian_steps=2)
  found = [f for f in short.findings if f.kind == "unconverged_jacobian"]
  assert len(found) == 1 and "jacobian_steps= in gf.analyze_model" in found[0].fix
  full = gf.analyze_model(model, x, y, infer=False)
  assert not any(f.kind == "unconverged_jacobian" for f in full.findings)
  # repr: one line naming the model, its size and the findings, not the parameter state
  text = repr(short)
  n = sum(v.size for v in jax.tree.leaves(model.params))
  assert "\n" not in text and len(text) < 400, text
  assert f"{n:,} values" in text and "unconverged_jacobian (" in text
  assert f"loss={float(short.stats.loss):.4g}" in text


@pytest.mark.parametrize("activation, phi", [("gelu", lambda z: jax.nn.gelu(z, approximate=False)),
                                             ("silu", jax.nn.silu)])
def test_the_init_check_predicts_the_measured_jacobian_of_gelu_and_silu_under_he(activation, phi):
  """Under He (sigma_w^2 = 2, sigma_b = 0) q* is 0 for GELU and SiLU, where
  chi_1 = 1/2, but the variance decays slowly from unit-variance inputs: the
  measured input-output Jacobian (jax.jacfwd of a plain-JAX forward, width
  256, 3 seeds x 4 examples) is within 2x of the finite-depth prediction the
  check now uses, and 20x or more above chi_1(q*)^10, which flagged the
  library's own recommended init."""
  depth, width = 10, 256
  cfg = gf.MLPConfig(in_dim=width, width=width, depth=depth, out_dim=4, activation=activation,
                     init="auto")
  measured = []

  @jax.jit
  def jacobians(layers, x):  # (4, width, width)
    def hidden(x):
      for l in layers:
        x = phi(x @ l["w"] + l["b"])
      return x
    return jax.vmap(jax.jacfwd(hidden))(x)
  for seed in range(3):
    params = gf.init_mlp(jax.random.key(seed), cfg)
    x = jax.random.normal(jax.random.key(10 + seed), (4, width))
    jac = jacobians(params["layers"][:depth], x)
    measured.append(np.sum(np.asarray(jac, np.float64) ** 2, axis=(1, 2)) / width)
  measured = float(np.mean(measured))
  predicted = gf.theory.mean_sq_singular_value_by_depth(activation, np.sqrt(2), 0.0, depth,
                                                        q0=2.0)[-1]
  at_fixed_point = gf.theory.chi1(activation, np.sqrt(2), 0.0) ** depth
  assert 0.5 < measured / predicted < 2, (measured, predicted)
  assert measured / at_fixed_point > 20, (measured, at_fixed_point)
  found = gf.diagnose(cfg, gf.init_mlp(jax.random.key(0), cfg), jax.random.normal(
      jax.random.key(1), (16, width)), jnp.arange(16) % 4)
  assert (measured < 1e-2) == any(f.kind == "init_mismatch" for f in found), found
