"""What the figures say: their texts and shaded regions, read back from the
matplotlib figure before it is saved."""

import numpy as np
import pytest

from gradflow_jax.diagnosis import _diagnose
from gradflow_jax.models import _activations
from gradflow_jax.render import _model_plots, _plots


@pytest.fixture
def figures(monkeypatch):
  saved = []
  monkeypatch.setattr(_plots._io, "save_figure", lambda fig, path, dpi=110: saved.append(fig))
  return saved


def _texts(fig):
  return [t.get_text() for ax in fig.axes for t in ax.texts] + [
      t.get_text() for ax in fig.axes for t in ([ax.title] + (
          ax.get_legend().get_texts() if ax.get_legend() else []))]


def _run(act, values, role="recommended", init="he"):
  return {"activation": act, "role": role, "init": init,
          "activation_stats": {k: values for k in ("std", "saturation_fraction",
                                                   "dead_fraction")},
          "gradient_stats": {"preact_grad_norm": values, "weight_grad_norm": values + [np.nan]}}


def test_nan_weights_say_all_values_non_finite_and_thresholds_are_drawn(figures):
  nan = [float("nan")] * 4
  _plots.plot_activation_stats([_run("relu", nan), _run("tanh", nan, "shared", "xavier")], "x")
  _plots.plot_grad_norms([_run("relu", nan)], "y")
  stats, grads = figures
  assert sum(t == "all values non-finite" for t in _texts(stats)) == 6  # 3 rows x 2 columns
  assert sum(t == "all values non-finite" for t in _texts(grads)) == 2
  lines = [round(l.get_ydata()[0], 6) for ax in stats.axes[2:] for l in ax.lines
           if l.get_linestyle() == ":"]
  assert lines == [_diagnose.SATURATION_WARN_FRACTION] * 2 + [_diagnose.DEAD_WARN_FRACTION] * 2
  assert "xavier init" in [t.get_text() for t in stats.legends[0].get_texts()]

  _plots.plot_activation_stats([_run("relu", [0.5, 0.4, 0.3, 0.2])], "z")
  assert "all values non-finite" not in _texts(figures[-1])


def test_runs_that_coincide_are_drawn_in_their_own_panels(figures):
  """relu and leaky_relu at init give the same curves: small multiples (a
  column per activation) keep each visible, both inits in each column."""
  same = [0.5, 0.4, 0.3, 0.2]
  runs = [_run(a, same, role, init) for a in ("relu", "leaky_relu", "tanh")
          for role, init in (("recommended", "he"), ("shared", "xavier"))]
  _plots.plot_activation_stats(runs, "x")
  _plots.plot_grad_norms(runs, "y")
  for fig, rows in zip(figures, (3, 2)):
    grid = np.asarray(fig.axes).reshape(rows, 3)
    assert [ax.get_title() for ax in grid[0]] == ["relu (he)", "leaky_relu (he)", "tanh (he)"]
    for ax in grid.flat:
      styles = sorted(l.get_linestyle() for l in ax.lines if l.get_linestyle() != ":")
      assert styles == ["-", "--"]
      assert all(np.allclose(l.get_ydata()[:4], same) for l in ax.lines
                 if l.get_linestyle() != ":")


def test_activation_curves_shade_every_low_derivative_region(figures):
  """GELU's dip near z = -0.75 (|phi'| < 5% of its max, outside the counted
  tail) is shaded orange; the tail below the saturation bound red; ReLU's
  z < 0 grey (phi' = 0); the dotted max-phi' line has a legend entry."""
  _plots.plot_activation_curves(["gelu", "relu"], "x")
  (fig,) = figures
  gelu_ax, relu_ax = fig.axes[:2]

  def shaded(ax, label):
    (poly,) = [c for c in ax.collections if c.get_label() == label]
    xs = np.concatenate([p.vertices[:, 0] for p in poly.get_paths()])
    return xs.min(), xs.max()
  act = _activations.get_activation("gelu")
  lo, hi = shaded(gelu_ax, "other |phi'| < 5%")
  assert -1.0 < lo < hi < -0.5
  z = np.linspace(lo + 0.01, hi - 0.01, 50, dtype=np.float32)
  assert np.all(np.abs(np.asarray(act.derivative(z, None))) < 0.05 * act.max_derivative)
  assert shaded(gelu_ax, "saturated (counted)")[1] == pytest.approx(
      act.saturation_bounds[0], abs=0.02)
  assert shaded(relu_ax, "phi' = 0")[1] == pytest.approx(0.0, abs=0.02)
  for ax in (gelu_ax, relu_ax):
    assert "max phi'" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_depth_sweep_axis_spans_the_data_and_flags_underflow(figures):
  """Values spanning 70 decades with NaN gaps (overflow) and zeros
  (underflow): the y axis covers every drawn value, the zeros are counted
  on the figure, the band is named in the legend."""
  depths = [1, 10, 100, 1000]
  norms = np.array([[[1.0, 1e-10, 1e-30, 0.0], [2.0, 1e-9, 1e-32, 0.0]]])
  msv = np.array([[[1.0, 1e10, 1e35, np.inf], [1.0, 1e11, 1e36, np.nan]]])
  point = {"label": "tanh", "spectrum_depths": depths, "depths": depths,
           "spectral_norm": norms, "mean_sq_singular_value": msv,
           "theory_mean_sq_singular_value": [1.0, 1e10, 1e200, np.inf]}
  _plots.plot_depth_sweep([point], "x")
  (fig,) = figures
  left, right = fig.axes[:2]
  assert left.get_ylim()[0] <= 1e-32 and left.get_ylim()[1] >= 2.0
  assert right.get_ylim()[0] <= 1.0 and 1e36 <= right.get_ylim()[1] < 1e100  # theory runs off
  assert "2 values not drawn: underflowed to 0 or not finite" in _texts(fig)
  assert any("10-90%" in t.get_text() for t in fig.legends[0].get_texts())


def test_histograms_over_steps_label_zero_and_crop_to_occupied_bins(figures):
  from gradflow_jax.watch import _flow_step
  edges = _flow_step.HISTOGRAM_EDGES
  centre = len(edges) // 2
  counts = np.zeros((3, len(edges) - 1))
  counts[:, centre] = 10  # exact zeros
  counts[:, centre + 41] = 5  # around +1e0
  counts[:, centre - 42] = 5  # around -1e0
  _model_plots.plot_histograms_over_steps({"relu_out": counts}, [0, 10, 20], "Tap values", "x")
  (fig,) = figures
  ax = fig.axes[0]
  labels = [t.get_text() for t in ax.get_yticklabels()]
  assert "0" in labels and len(labels) <= 8
  lo, hi = ax.get_ylim()
  assert lo == centre - 42 - 0.5 and hi == centre + 41 + 0.5


def test_a_layer_curve_that_reaches_zero_says_where(figures):
  """A log axis cannot draw 0: the legend says from which layer the norms are
  0, at the layers the curve was measured at."""
  norms = np.array([[2.0, 1.5, 0.0, 0.0], [2.1, 1.4, 0.0, 0.0]])
  _plots.plot_layer_jacobians([{"label": "relu", "layers": np.array([0, 10, 20, 30]),
                                "norms": norms, "converged": np.ones_like(norms, bool),
                                "chi1": 1.0}], "x")
  (fig,) = figures
  assert "relu (0 at 2 layers from layer 20 on: the signal reached 0)" in _texts(fig)
  assert list(fig.axes[0].lines[0].get_xdata()) == [0, 10, 20, 30]
