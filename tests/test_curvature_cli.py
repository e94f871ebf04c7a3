"""``analyze.py curvature``: one run on a tiny linen MLP (316 parameters, 32
examples), its numbers against the dense Hessian from ``jax.hessian`` of the
same loss written independently (``model.apply`` and optax's cross-entropy),
diagonalized by NumPy in float64; its files; the figure's marks."""

import json
import os

import jax
import matplotlib.figure
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import gradflow_jax as gf
from gradflow_jax.cli import _cli
from gradflow_jax.models import _loading

REL = 1e-3  # the bar for the top eigenvalue and block sharpness

FACTORY = '''
import jax, jax.numpy as jnp, numpy as np
from flax import linen as nn

class Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(4, name="out")(jnp.tanh(nn.Dense(24, name="hidden")(x)))

def make():
  rng = np.random.default_rng(0)
  x = (1.5 * rng.normal(size=(32, 8))).astype(np.float32)
  y = (np.arange(32) % 4).astype(np.int32)
  net = Net()
  return net, net.init(jax.random.key(0), x), (x, y)
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(results.json, out folder, the factory's (model, variables, (x, y)))."""
  folder = tmp_path_factory.mktemp("curvature")
  (folder / "tiny.py").write_text(FACTORY)
  out = folder / "out"
  code = _cli.main(["curvature", "--model", f"{folder / 'tiny.py'}:make", "--examples", "32",
                    "--probes", "16", "--lanczos-steps", "40", "--top", "3", "--lr", "0.5",
                    "--out", str(out), "--quiet"])
  assert code == 0
  with open(out / "results.json") as f:
    result = json.load(f)
  model, variables, batch, _ = _loading.call_factory(
      _loading.load_factory(f"{folder / 'tiny.py'}:make"))
  return result, out, (model, variables, batch)


def dense_hessian(model, variables, batch):
  """(float64 dense Hessian, leaf sizes in ``jax.tree.leaves`` order)."""
  flat, unravel = ravel_pytree(variables["params"])
  x, y = batch

  def loss(f):
    logits = model.apply({"params": unravel(f)}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  h = np.asarray(jax.jit(jax.hessian(loss))(flat), np.float64)
  return (h + h.T) / 2, [x.size for x in jax.tree.leaves(variables["params"])]


def test_cli_run_against_the_dense_hessian_and_its_files(run):
  """One test for the one run (a test per check would run it once per xdist
  worker): the top eigenvalue and one leaf's block sharpness within REL of
  eigvalsh, the trace within 4 of its standard errors, a density that
  integrates to 1 over a grid spanning the spectrum, the files and keys."""
  result, out, (model, variables, batch) = run
  h, sizes = dense_hessian(model, variables, batch)
  eig = np.linalg.eigvalsh(h)[::-1]
  assert result["parameters"] == len(eig) == 316
  assert result["converged"][0]
  np.testing.assert_allclose(result["top_eigenvalues"][0], eig[0], rtol=REL)
  assert result["trace_stderr"] > 0
  assert abs(result["trace"] - np.trace(h)) <= 4 * result["trace_stderr"]

  edges = np.cumsum([0] + sizes)
  names = list(result["blocks"])
  assert names == ["hidden/bias", "hidden/kernel", "out/bias", "out/kernel"]
  i = names.index("hidden/kernel")
  want = np.linalg.eigvalsh(h[edges[i]:edges[i + 1], edges[i]:edges[i + 1]])[-1]
  block = result["blocks"]["hidden/kernel"]
  assert block["converged"] and block["size"] == sizes[i]
  np.testing.assert_allclose(block["sharpness"], want, rtol=REL)

  grid, values = np.asarray(result["density"]["grid"]), np.asarray(result["density"]["values"])
  np.testing.assert_allclose(np.trapezoid(values, grid), 1, atol=1e-3)
  assert grid[0] < eig[-1] and grid[-1] > eig[0]  # Gauss nodes lie inside [min, max] eigenvalue
  assert 0 < result["density"]["sigma"] < (grid[-1] - grid[0]) / 100

  assert sorted(os.listdir(out)) == ["hessian_spectrum.png", "results.json"]
  assert result["command"] == "curvature" and result["files"] == ["hessian_spectrum.png"]
  for key in ("settings", "parameters", "loss", "top_eigenvalues", "top_error", "converged",
              "trace", "trace_stderr", "density", "slq", "blocks", "thresholds", "model",
              "data", "loss_name", "schema_version"):
    assert key in result, key
  assert result["settings"] == {"examples": 32, "probes": 16, "lanczos_steps": 40, "top": 3,
                                "seed": 0, "lr": 0.5, "tol": 1e-3, "probes_at_once": None}
  assert len(result["top_eigenvalues"]) == len(result["converged"]) == 3
  assert (result["thresholds"]["gd"], result["thresholds"]["adam"]) == pytest.approx((4, 76),
                                                                                     rel=1e-12)
  assert np.asarray(result["slq"]["nodes"]).shape == (16, 40)


def _hand_made_result():
  """A result in the results.json layout (None for NaN): a density with
  two bumps, three top eigenvalues of which two did not converge, one
  unconverged block, lr 0.5."""
  grid = np.linspace(-1, 3, 401)
  values = 0.9 * np.exp(-grid**2 / 0.02) / np.sqrt(0.02 * np.pi) \
      + 0.1 * np.exp(-(grid - 2) ** 2 / 0.02) / np.sqrt(0.02 * np.pi)
  block = lambda v, ok: {"sharpness": v, "error": 0.0, "converged": ok, "size": 10}
  return {"settings": {"examples": 32, "probes": 4, "lanczos_steps": 10, "top": 3, "seed": 0,
                       "lr": 0.5, "tol": 1e-3, "probes_at_once": None},
          "parameters": 40, "loss": 1.0, "top_eigenvalues": [2.0, 1.5, 0.5],
          "top_error": [0.0, 0.1, 0.2], "converged": [True, False, False], "trace": 3.0,
          "trace_stderr": 0.5, "density": {"grid": grid.tolist(), "values": values.tolist(),
                                           "sigma": 0.1},
          "blocks": {"a/kernel": block(1.2, True), "a/bias": block(0.3, False),
                     "b/kernel": block(None, False), "b/bias": block(0.01, True)},
          "thresholds": {"lr": 0.5, "gd": 4.0, "adam": 76.0, "adam_b1": 0.9}}


def test_figure_marks_unconverged_values_and_says_what_adams_threshold_is_for():
  """An unconverged eigenvalue or block is labelled as a lower bound, never as
  a value; 2/lr is drawn, 38/lr only named (it bounds P^-1 H); a NaN block
  is written as NaN."""
  fig = gf.plots.hessian_spectrum(_hand_made_result())
  assert isinstance(fig, matplotlib.figure.Figure)
  density, blocks = fig.axes[:2]
  labels = [t.get_text() for t in density.get_legend().get_texts()]
  assert labels[:2] == ["density", "\u03bb1 = 2"] and labels[-1] == "GD 2/lr = 4 (lr 0.5)"
  assert labels[2:4] == ["\u03bb2 \u2265 1.5 (not converged)", "\u03bb3 \u2265 0.5 (not converged)"]
  notes = " ".join(t.get_text() for t in density.texts)
  assert "Adam 38/lr" in notes and "not drawn" in notes
  assert "not converged (a lower bound)" in [
      t.get_text() for t in blocks.get_legend().get_texts()]
  assert [t.get_text() for t in blocks.get_yticklabels()] == [
      "a/kernel", "a/bias", "b/bias", "b/kernel"]  # the sharpest first, NaN last
  assert "NaN" in [t.get_text() for t in blocks.texts]


def test_figure_of_a_nonfinite_hessian_says_so_and_a_far_threshold_is_a_note():
  """NaN everywhere (a model whose loss is NaN): notes, no marks, no error; an
  lr whose 2/lr lies far beyond the spectrum is named, not drawn."""
  nan = _hand_made_result()
  nan.update(top_eigenvalues=[None] * 3, top_error=[None] * 3, converged=[False] * 3,
             trace=None, trace_stderr=None, loss=None,
             density={**nan["density"], "values": [None] * 401, "sigma": None},
             blocks={k: {**v, "sharpness": None, "converged": False}
                     for k, v in nan["blocks"].items()})
  density, blocks = gf.plots.hessian_spectrum(nan).axes[:2]
  assert "non-finite" in " ".join(t.get_text() for t in density.texts)
  assert [t.get_text() for t in blocks.texts] == ["NaN"] * 4
  far = {**_hand_made_result(), "thresholds": {"lr": 1e-3, "gd": 2000.0, "adam": 38000.0,
                                                "adam_b1": 0.9}}
  density = gf.plots.hessian_spectrum(far).axes[0]
  assert "GD 2/lr = 2e+03 (lr 0.001) lies beyond the axis, 1e+03\u00d7 \u03bb1" in \
      " ".join(t.get_text() for t in density.texts)
  assert not any("GD" in t.get_text() for t in density.get_legend().get_texts())
  assert density.get_xlim()[1] < 10

