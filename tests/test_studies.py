"""Depth and width studies of model families: numbers against independent
references (jax.jacfwd + NumPy SVD), each example's expected direction, the
sharded run against one device, and bad factories refused in one line."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow_jax as gf
from helpers import run_on_host_devices
from gradflow_jax.cli import _cli

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
sys.path.insert(0, EXAMPLES)
import mlp_width  # noqa: E402
import resnet_cnn  # noqa: E402
import residual_mlp  # noqa: E402
import transformer_ln  # noqa: E402

SMALL = dict(depths=(2, 6), seeds=2, width=16, examples=4)


@pytest.fixture(scope="module")
def unscaled():
  return gf.depth_study(residual_mlp.make_unscaled, gf.studies.DepthStudySettings(**SMALL))


def _reference_jacobian(make, depth, width, seed, example):
  """J = d h_L / d x of one example by jax.jacfwd on the linen module itself,
  with the parameters the study draws for ``seed``."""
  key = jax.random.fold_in(jax.random.key(0), seed)
  model, variables, (x, _) = make(depth=depth, width=width, key=key)

  p = variables["params"]

  def stream(xi):  # the read-out's input, written out from the raw parameters
    h = xi
    for i in range(depth):
      inner = jax.nn.relu(h @ p[f"block{i}_in"]["kernel"] + p[f"block{i}_in"]["bias"])
      h = h + model.scale * (inner @ p[f"block{i}_out"]["kernel"] + p[f"block{i}_out"]["bias"])
    return h
  return np.asarray(jax.jit(jax.jacfwd(stream))(x[example]), np.float64)


def test_residual_mlp_jacobian_matches_jacfwd_svd_and_theory(unscaled):
  for d in unscaled["depths"]:
    for seed in range(SMALL["seeds"]):
      for ex in (0, 3):
        sv = np.linalg.svd(_reference_jacobian(residual_mlp.make_unscaled, d["depth"], 16, seed,
                                               ex), compute_uv=False)
        assert d["spectral_norm"][seed, ex] == pytest.approx(sv[0], rel=1e-4)
        assert d["mean_sq_singular_value"][seed, ex] == pytest.approx(np.mean(sv**2), rel=1e-4)
    assert d["lanczos_vs_exact_max_rel_diff"] < 1e-3  # the bar; measured ~5e-7
    assert d["converged"].all()
  # E ||J||_F^2 / n = 2^L exactly (see the example): the mean of 8 samples is
  # within a factor 2 of it (their spread at depth 6 is about +-50%)
  for d in unscaled["depths"]:
    assert d["theory_mean_sq_singular_value"] == 2.0 ** d["depth"]
    assert 0.5 < np.mean(d["mean_sq_singular_value"]) / 2.0 ** d["depth"] < 2


def test_residual_scale_keeps_the_jacobian_bounded(unscaled):
  scaled = gf.depth_study(residual_mlp.make, gf.studies.DepthStudySettings(**SMALL))
  grow = lambda r: (r["depths"][1]["summary"]["mean_sq_singular_value"]["median"]
                    / r["depths"][0]["summary"]["mean_sq_singular_value"]["median"])
  # theory: 2^6 / 2^2 = 16 unscaled; (7/6)^6 / 1.5^2 = 1.13 with 1/sqrt(L)
  assert grow(unscaled) > 6
  assert grow(scaled) < 1.6


def test_resnet_normalization_turns_exponential_growth_linear():
  # the mean square by Hutchinson (exact_max=0; 8 probes x 4 examples: about
  # 10% error); 2 Lanczos steps keep the program small (its norms unused)
  settings = gf.studies.DepthStudySettings(depths=(2, 6), seeds=1, width=4, examples=4, exact_max=0,
                                   steps=2)
  grow = lambda make: (lambda r: r["depths"][1]["summary"]["mean_sq_singular_value"]["median"]
                       / r["depths"][0]["summary"]["mean_sq_singular_value"]["median"])(
                           gf.depth_study(make, settings))
  # theory: (q0 + 6) / (q0 + 2) < 3 with GroupNorm; 2^4 = 16 without
  assert grow(resnet_cnn.make) < 4
  assert grow(resnet_cnn.make_unnormalized) > 6


def test_pre_ln_stream_grows_and_last_layer_gradient_falls_post_ln_neither():
  """Xiong et al. 2020: pre-LN's residual stream grows like sqrt(L), so the
  final LN shrinks the gradient at the last block like 1/sqrt(L); post-LN
  normalises every block: both stay flat (theory for pre-LN from depth 2 to
  8: x sqrt(4) = 2 and x 0.5)."""
  settings = gf.studies.DepthStudySettings(depths=(2, 8), seeds=1, width=16, examples=16,
                                   jacobians=False)

  def at_last_block(make):
    out = []
    for d in gf.depth_study(make, settings)["depths"]:
      last = d["depth"] - 1
      stream = d["taps"].index(f"blocks/LayerNorm_0/input/layer_{last}")
      mlp = d["taps"].index(f"blocks/Dense_1/layer_{last}")
      out.append((d["tap_std"][:, stream].mean(), d["tap_grad_norm"][:, mlp].mean()))
    (s2, g2), (s8, g8) = out
    return s8 / s2, g8 / g2
  pre_std, pre_grad = at_last_block(transformer_ln.make_pre)
  post_std, post_grad = at_last_block(transformer_ln.make_post)
  # measured over 3 seeds: pre 1.92-1.99 and 0.47-0.52; post 1.27-1.37 and 0.79-0.97
  assert 1.7 < pre_std < 2.3 and 0.4 < pre_grad < 0.6
  assert 0.75 < post_std < 1.55 and post_grad > 0.7


def test_interacting_examples_take_each_block_with_the_batch_fixed():
  """BatchNorm in training mode couples the examples: example i's Jacobian is
  d out_i / d x_i with the other examples held, checked against jacfwd."""
  from flax import linen as nn

  class BNNet(nn.Module):
    depth: int
    width: int

    @nn.compact
    def __call__(self, x):
      for _ in range(self.depth):
        x = nn.tanh(nn.BatchNorm(use_running_average=False)(nn.Dense(self.width)(x)))
      return nn.Dense(3)(x)

  def make(depth, width, key=None):
    x = jax.random.normal(jax.random.key(1), (4, 5))
    model = BNNet(depth, width)
    return model, model.init(key, x), (x, jnp.arange(4) % 3)
  result = gf.depth_study(make, gf.studies.DepthStudySettings(depths=(2,), seeds=1, width=6))
  assert result["examples_interact"]
  d = result["depths"][0]
  model, variables, (x, _) = make(2, 6, jax.random.fold_in(jax.random.key(0), 0))
  probed = gf.from_linen(model, variables)
  jacobian = jax.jit(jax.jacfwd(  # example i's row, the others held; one compile for all i
      lambda xi, i: probed.forward(probed.params, x.at[i].set(xi), None)[1][d["target"]][i]))
  for i in range(4):
    sv = np.linalg.svd(np.asarray(jacobian(x[i], i)), compute_uv=False)
    assert d["spectral_norm"][0, i] == pytest.approx(sv[0], rel=1e-4)
    assert d["mean_sq_singular_value"][0, i] == pytest.approx(np.sum(sv**2) / 5, rel=1e-4)


def test_width_study_standard_parametrisation_blows_up_under_adam():
  result = gf.width_study(mlp_width.make, gf.studies.WidthStudySettings(
      widths=(16, 32, 64), seeds=1, steps=1, lr=1e-3, depth=2))
  names, slopes = result["taps"], result["slopes"]
  assert all(abs(v) < 0.2 for v in slopes["init"])  # LeCun init: width-stable
  assert abs(slopes["last_step"][names.index("layers/0")]) < 0.2  # fan-in fixed
  assert slopes["last_step"][names.index("readout")] > 0.6  # grows like width
  # rms(tap_0) against NumPy on the factory's own network
  model, _, (x, _) = mlp_width.make(depth=2, width=16, key=jax.random.fold_in(
      jax.random.key(0), 0))
  h = np.asarray(model.layers[0](x))
  assert result["widths"][0]["rms_init"][0, 0] == pytest.approx(np.sqrt(np.mean(h**2)), rel=1e-5)


def test_sharded_study_equals_one_device(unscaled):
  """4 host devices (2 seeds padded to 4): the same numbers as one device."""
  script = os.path.join(os.path.dirname(__file__), "_sharded_study.py")
  settings = {**SMALL, "depths": list(SMALL["depths"])}
  out = run_on_host_devices([script, json.dumps(settings)], timeout=600)
  sharded = json.loads(out.strip().splitlines()[-1])
  assert sharded["devices"] == 4
  for one, many in zip(unscaled["depths"], sharded["depths"]):
    for k, v in many.items():
      np.testing.assert_allclose(np.asarray(v, float), np.asarray(one[k], float), rtol=1e-5)


def _factory_file(tmp_path, body):
  path = tmp_path / "family.py"
  path.write_text("import jax, jax.numpy as jnp\nfrom flax import linen as nn\n" + body)
  return str(path)


IGNORES_DEPTH = """
def make(depth=1, width=4, key=None):
  x = jnp.ones((2, 3))
  model = nn.Dense(2)
  return model, model.init(jax.random.key(0) if key is None else key, x), (x, jnp.zeros(2, int))
"""
NO_DEPTH = IGNORES_DEPTH.replace("def make(depth=1, width=4, key=None)", "def make(size)")


@pytest.mark.parametrize("body, command, fragment", [
    (NO_DEPTH, ["depth"], "expected the factory to take the keyword argument depth="),
    (IGNORES_DEPTH, ["depth"], "expected the number of taps to change with depth"),
    (IGNORES_DEPTH, ["depth", "--max-depth", "4"], "expected --max-depth only for the built-in"),
    (IGNORES_DEPTH, ["width", "--widths", "2,4"], "expected tap shapes to change with width"),
    (IGNORES_DEPTH, ["width", "--widths", "2,2"], "expected distinct values"),
])
def test_bad_factories_exit_2_with_one_line(tmp_path, capsys, body, command, fragment):
  path = _factory_file(tmp_path, body)
  args = command + ["--model", f"{path}:make", "--seeds", "1", "--quiet",
                    "--out", str(tmp_path / "o")]
  if command == ["depth"]:
    args += ["--depths", "1,2"]
  try:
    code = _cli.main(args)
  except SystemExit as e:
    code = e.code
  _, err = capsys.readouterr()
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and fragment in lines[0], err


def test_depth_cli_writes_results_plots_and_report(tmp_path, capsys):
  out = tmp_path / "d"
  code = _cli.main(["depth", "--model", os.path.join(EXAMPLES, "residual_mlp.py:make_unscaled"),
                    "--depths", "2,6", "--seeds", "2", "--width", "16", "--out", str(out)])
  text, _ = capsys.readouterr()
  assert code == 0
  for name in ("results.json", "depth_study.png", "depth_layer_heatmap.png", "report.html"):
    assert (out / name).stat().st_size > 0
  data = json.loads((out / "results.json").read_text())
  assert [d["depth"] for d in data["depths"]] == [2, 6] and data["has_theory"]
  assert len(data["depths"][0]["spectral_norm"]) == 2  # seeds x examples
  assert "Depth study" in text and "Lanczos" in text
  assert data["depths"][1]["theory_mean_sq_singular_value"] == 2.0**6


def test_growth_laws():
  """mean_field_law is theory's per-depth prediction (He-ReLU is critical:
  chi_1 = 1 at every depth); residual_law is (1 + a^2 g)^L."""
  he_relu = gf.studies.mean_field_law("relu", np.sqrt(2.0))
  assert [he_relu(d) for d in (1, 5, 50)] == pytest.approx([1.0, 1.0, 1.0], rel=1e-9)
  tanh = gf.studies.mean_field_law("tanh", 1.5, 0.1, q0=1.0)
  expected = gf.theory.mean_sq_singular_value_by_depth("tanh", 1.5, 0.1, 7, q0=1.0)
  assert [tanh(d) for d in range(1, 8)] == pytest.approx(list(expected), rel=1e-12)
  assert gf.studies.residual_law(1.0, scaled=True)(4) == pytest.approx(1.25**4)
  assert gf.studies.residual_law(2.0, scaled=False)(3) == pytest.approx(27.0)
