"""What the figures say: their texts and shaded regions, read back from the
matplotlib figure before it is saved."""

import numpy as np
import pytest

from gradflow_jax.diagnosis import _diagnose
from gradflow_jax.models import _activations
from gradflow_jax.render import (_axes, _depth_plots, _model_plots, _model_training_plots,
                                 _plots)


@pytest.fixture
def figures(monkeypatch):
  saved = []
  monkeypatch.setattr(_plots._io, "save_figure", lambda fig, path, dpi=110: saved.append(fig))
  return saved


def _texts(fig):
  """Every text of a figure: notes, titles (centre, left, right), legends."""
  return [t.get_text() for ax in fig.axes for t in ax.texts] + [
      ax.get_title(loc) for ax in fig.axes for loc in ("center", "left", "right")] + [
      t.get_text() for ax in fig.axes
      for t in (ax.get_legend().get_texts() if ax.get_legend() else [])] + [
      t.get_text() for leg in fig.legends for t in leg.get_texts()]


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
  _depth_plots.plot_depth_sweep([point], "x")
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
  _model_training_plots.plot_histograms_over_steps({"relu_out": counts}, [0, 10, 20],
                                                   "Tap values", "x")
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
  _depth_plots.plot_layer_jacobians([{"label": "relu", "layers": np.array([0, 10, 20, 30]),
                                      "norms": norms, "converged": np.ones_like(norms, bool),
                                      "chi1": 1.0}], "x")
  (fig,) = figures
  assert "relu (0 at 2 layers from layer 20 on: the signal reached 0)" in _texts(fig)
  assert list(fig.axes[0].lines[0].get_xdata()) == [0, 10, 20, 30]


def _draw(fig):
  """Renders a figure as saving it would (what raised 'Data cannot be
  log-scaled'); returns the renderer for bounding boxes."""
  import io
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  canvas = FigureCanvasAgg(fig)
  fig.savefig(io.BytesIO(), format="png")
  return canvas.get_renderer()


def _integer(ticks):
  ticks = np.asarray(ticks, float)
  return ticks.size > 0 and np.all(ticks == np.round(ticks))


def test_layer_axes_have_integer_ticks_and_rows_that_index_other_layers_do_not_share_x(figures):
  """10 hidden layers (matplotlib's own ticks: 0, 2.5, 5, 7.5) and, with
  residual blocks, 19 dense layers: every layer axis ticks integers, and the
  dense-layer row has its own x axis, named as such."""
  runs = [_run("relu", list(np.linspace(1.0, 0.1, 10)))]
  runs[0]["gradient_stats"]["weight_grad_norm"] = list(np.linspace(1.0, 0.1, 19))
  _plots.plot_grad_norms(runs, "x", settings={"depth": 10, "width": 32, "residual": True})
  (fig,) = figures
  top, bottom = fig.axes[:2]
  assert not top.get_shared_x_axes().joined(top, bottom)
  assert top.get_xlabel() == "hidden layer" and bottom.get_xlabel().startswith("dense layer")
  _draw(fig)
  for ax in (top, bottom):
    assert _integer(ax.get_xticks()), ax.get_xticks()
  assert bottom.get_xlim()[1] > 18 > top.get_xlim()[1]


def test_grad_heatmap_ticks_integer_layers_and_names_cells_without_a_value(figures):
  g = np.ones((6, 9))
  g[2:4, 3] = np.nan  # NaN/Inf cells: hatched, in the legend, counted
  _plots.plot_grad_heatmap([{"label": "plain", "logs": {"preact_grad_norm": g},
                             "depth": 9, "width": 8, "activation": "relu"}], "x")
  (fig,) = figures
  ax = fig.axes[0]
  _draw(fig)
  assert _integer(ax.get_yticks()) and _integer(ax.get_xticks())
  assert _axes.NO_VALUE_LABEL in [t.get_text() for leg in fig.legends for t in leg.get_texts()]
  assert "2 cells without a value (hatched)" in _texts(fig)
  assert ax.images[0].get_cmap().get_bad()[3] == 0  # NaN transparent: the hatching shows
  assert any(p.get_hatch() for p in ax.patches)


def test_update_ratio_lines_are_labelled_by_their_parameter_paths(figures):
  """14 leaves (the NNX MLP): one line each, labelled by its path, no two
  alike in colour, line style and marker; 60 leaves: a line per group of
  leaves, labelled by the path they share, every leaf in one group."""
  names = [f"{layer}/{kind}" for layer in ("head", "layers/0", "layers/1", "layers/2")
           for kind in ("kernel", "bias")] + [f"norms/{i}/{k}" for i in range(3)
                                              for k in ("bias", "scale")]
  run = {"logged_steps": [0, 10, 20],
         "update_ratio": {n: [None if n.endswith("bias") else 1e-3, 2e-3, 3e-3] for n in names}}
  _model_training_plots.plot_update_ratios(run, "x")
  ax = figures[-1].axes[0]
  lines = [l for l in ax.lines if l.get_label() in names]
  assert sorted(l.get_label() for l in lines) == sorted(names)
  styles = {(l.get_color(), l.get_linestyle(), l.get_marker()) for l in lines}
  assert len(styles) == len(names)
  assert {t.get_text() for t in ax.get_legend().get_texts()} >= set(names)
  assert "unlabelled" not in ax.get_title()
  assert any("points not drawn: ||W|| = 0" in t for t in _texts(figures[-1]))

  many = [f"blocks/{b}/{m}/{k}" for b in range(10) for m in ("attn", "mlp", "ln")
          for k in ("kernel", "bias")]
  _model_training_plots.plot_update_ratios({"logged_steps": [0, 10], "update_ratio": {
      n: [1e-3, 2e-3] for n in many}}, "y")
  ax = figures[-1].axes[0]
  labels = [l.get_label() for l in ax.lines if not l.get_label().startswith("_")
            and "leaves" in l.get_label()]
  assert 1 < len(labels) <= 20
  prefixes = [lab.split(" (")[0].removesuffix("/*") for lab in labels]
  for n in many:
    assert sum(n.startswith(p + "/") for p in prefixes) == 1, n
  assert sum(int(lab.split("(")[1].split()[0]) for lab in labels) == len(many)


def test_rnn_whose_gradients_are_all_zero_is_drawn_with_a_note(figures):
  """--hidden 1: ||dh_T/dh_0|| and ||dL/dh_0|| underflow to exactly 0 at
  every scale; the figure is drawn (it used to raise 'Data cannot be
  log-scaled'), the zeros at 0 on a linear axis with a note saying why."""
  T = 6
  runs = []
  for scale in (0.5, 1.0, 2.0):
    jac = np.zeros((4, T))
    jac[:, -1] = 1.0  # dh_T/dh_T
    runs.append({"activation": "tanh", "scale": scale, "scale_kind": "spectral_norm",
                 "gamma": 1.0, "jacobian_norm": jac, "state_grad_norm": np.zeros((4, T)),
                 "pascanu_bound": scale ** np.arange(T)[::-1], "weight_norm": scale})
  _depth_plots.plot_rnn_through_time(runs, "x", settings={"hidden": 1, "steps": T,
                                                          "init": "orthogonal"})
  (fig,) = figures
  _draw(fig)
  left, right = fig.axes[:2]
  assert right.get_yscale() == "linear" and left.get_yscale() == "log"
  assert any("exactly 0" in t for t in _texts(fig))
  assert any("(0 from T-t = 1 on)" in t for t in _texts(fig))
  assert np.allclose(right.lines[0].get_ydata(), 0)
  assert "hidden 1" in fig.get_suptitle()


def test_layer_jacobians_label_narrow_log_axes_and_give_each_curve_a_panel(figures):
  """Norms between 2.2 and 2.7 on a log axis: labelled major ticks (no
  decade in view, where matplotlib labels two minor ticks 2x10^0), no
  labelled minor ticks; two curves in two panels; layers integer."""
  rng = np.random.default_rng(0)
  curves = [{"label": name, "norms": 2.2 + 0.5 * rng.random((4, 20)), "chi1": None}
            for name in ("tanh", "relu")]
  _depth_plots.plot_layer_jacobians(curves, "x")
  (fig,) = figures
  _draw(fig)
  axes = fig.axes[:2]
  assert [ax.get_title(loc="left") for ax in axes] == ["tanh", "relu"]
  ax = axes[0]
  labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
  lo, hi = ax.get_ylim()
  shown = [float(v) for v in ax.get_yticks() if lo <= v <= hi]
  assert len(shown) >= 3 and len(labels) >= 3 and all("times" not in l for l in labels)
  assert not [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()]
  assert _integer(axes[-1].get_xticks())


def test_log_ticks_stay_readable_at_every_span():
  ticks = _axes._LogTicks()
  assert ticks.tick_values(2.2, 2.7) == pytest.approx([2.2, 2.3, 2.4, 2.5, 2.6, 2.7])
  assert ticks.tick_values(0.3, 30) == pytest.approx([0.5, 1, 2, 5, 10, 20])
  assert len(ticks.tick_values(1e-38, 1e14)) <= 8
  assert [_axes._tick_label(v) for v in (2.5, 1000, 0.05, 1e-5, 2e-7)] == [
      "2.5", "1000", "0.05", "$10^{-5}$", "$2\\times10^{-7}$"]


def test_model_taps_draws_each_quantity_on_its_own_labelled_axis(figures):
  import types
  n = 5
  stats = types.SimpleNamespace(
      names=[f"layers/{i}" for i in range(n)],
      activations=types.SimpleNamespace(std=np.linspace(0.5, 1.0, n)),
      tap_grad_norm=np.linspace(1e-4, 1e-2, n))
  jac = types.SimpleNamespace(norm=np.full((3, n), 2.0), converged=np.ones((3, n), bool))
  jac.converged[:, 2] = False
  _model_plots.plot_taps(stats, jac, "x")
  (fig,) = figures
  axes = fig.axes
  assert len(axes) == 3
  ylabels = [ax.get_ylabel() for ax in axes]
  assert ylabels[0].startswith("std") and ylabels[1].startswith("||dL/d tap||")
  assert ylabels[2].startswith("||d tap / d source||")
  assert [l.get_text() for l in axes[-1].get_xticklabels()] == stats.names
  assert "Jacobian not converged (not drawn)" in _texts(fig)


def test_figure_titles_say_what_was_run(figures):
  """Compare and train --experiment figures name depth, width, norm,
  residual, optimizer... in their suptitle, and what differs between runs."""
  _plots.plot_activation_stats([_run("relu", [1.0, 0.5])], "a", settings={
      "depth": 2, "width": 48, "residual": True, "norm": "layernorm", "batch": 16})
  title = figures[-1].get_suptitle()
  for part in ("2 hidden layers", "width 48", "residual", "layernorm", "batch 16"):
    assert part in title
  logs = {"loss": [2.0, 1.5, 1.0], "preact_grad_norm": np.ones((3, 4)),
          "grad_norm": [1.0, 1.0, 1.0], "clipped": [False] * 3,
          "dead_fraction": np.zeros((3, 4)), "saturation_fraction": np.zeros((3, 4))}
  runs = [{"label": lab, "activation": "relu", "depth": 4, "width": 32, "residual": res,
           "norm": None, "init": "he_normal", "optimizer": "adam", "lr": 1e-3, "clip": None,
           "logs": logs, "eval_steps": [0, 2], "eval_accuracy": [0.1, 0.5], "stopped_at": None}
          for lab, res in (("plain", False), ("residual", True))]
  for draw in (_plots.plot_training, _plots.plot_grad_heatmap, _plots.plot_fractions):
    draw(runs, "t")
    title = figures[-1].get_suptitle()
    for part in ("relu", "depth 4", "width 32", "norm none", "adam", "lr 0.001",
                 "no clipping", "differ in: residual"):
      assert part in title, (draw.__name__, part, title)


def test_depth_layer_heatmap_groups_taps_by_block(figures):
  """Taps named .../layer_k: a column per tap of the deepest network,
  blocks labelled and separated, a shallower network's head under the same
  column as the deepest's, its missing blocks grey and named in the legend."""
  def record(depth):
    taps = ["embed"] + [f"blocks/{m}/layer_{k}" for k in range(depth)
                        for m in ("LayerNorm_0/input", "Dense_0", "Dense_1")] + ["head/input",
                                                                                  "head"]
    return {"depth": depth, "taps": taps, "source": "<input>",
            "tap_mean_sq_singular_value": np.full((2, len(taps)), 2.0)}
  result = {"depths": [record(2), record(4)]}
  result["depths"][0]["tap_mean_sq_singular_value"][:, -1] = 4.0
  _model_plots.plot_depth_layer_heatmap(result, "family", "x")
  (fig,) = figures
  ax = fig.axes[0]
  labels = [t.get_text() for t in ax.get_xticklabels()]
  assert [l for l in labels if l.startswith("layer_")] == [f"layer_{k}" for k in range(4)]
  assert "embed" in labels and "head" in labels
  grid = ax.images[0].get_array()
  assert grid.shape == (2, 1 + 4 * 3 + 2)
  assert grid[0, -1] == pytest.approx(np.log10(4.0))  # depth 2's head under the deepest's
  assert np.ma.getmaskarray(grid)[0, 7:13].all() or np.isnan(grid[0, 7:13]).all()
  assert any("shallower" in t.get_text() for t in ax.get_legend().get_texts())
  assert "LayerNorm_0/input/layer_k" in ax.get_xlabel()


def test_histogram_panels_keep_their_tick_labels_clear_of_each_other(figures):
  from gradflow_jax.watch import _flow_step
  edges = _flow_step.HISTOGRAM_EDGES
  counts = np.zeros((3, len(edges) - 1))
  counts[:, 5:-5] = 1.0  # every decade occupied: the widest tick labels
  _model_training_plots.plot_histograms_over_steps({f"tap_{i}": counts for i in range(8)},
                                                   [0, 10, 20], "Tap values", "x")
  (fig,) = figures
  renderer = _draw(fig)
  panels = [ax for ax in fig.axes if ax.get_title().startswith("tap_")]
  grid = {(round(ax.get_position().y0, 3), round(ax.get_position().x0, 3)): ax for ax in panels}
  rows = {}
  for (y, x), ax in sorted(grid.items()):
    rows.setdefault(y, []).append(ax)
  for row in rows.values():  # a visible gap (5 px at 100 dpi), not labels touching a panel
    for left, right in zip(row, row[1:]):
      assert left.get_tightbbox(renderer).x1 + 5 <= right.get_tightbbox(renderer).x0


def test_train_model_report_embeds_only_images_and_states_the_test_accuracy(tmp_path):
  """log.jsonl beside the PNGs was embedded as an image (a broken icon);
  the report now has the run's table and says its test accuracy."""
  from gradflow_jax.render import _report
  png = tmp_path / "training_curves.png"
  png.write_bytes(b"\x89PNG\r\n\x1a\n")
  log = tmp_path / "log.jsonl"
  log.write_text('{"gradflow_jsonl": 1}\n')
  payload = {"model": "m.py:make", "data": "digits", "loss_name": "cross_entropy",
             "settings": {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "clip": None,
                          "steps": 30, "every": 10},
             "steps_run": 30, "final_loss": 0.76, "test_accuracy": 0.875, "stopped_at": None,
             "taps": ["layers/0"], "roles": ["pre"], "activation_names": [None],
             "logged_steps": [0, 10, 20],
             "tap_stats": {"layers/0": {"grad_norm": [0.14, 0.1, 0.085], "std": [1.0, 1.0, 1.04],
                                        "dead_fraction": [0.0, 0.0, 0.0]}}}
  _report.write_report(tmp_path / "report.html", "t", [("m", [])],
                       _report.model_train_tables(payload), [str(log), str(png)])
  page = (tmp_path / "report.html").read_text()
  assert "log.jsonl" not in page and page.count("<img") == 1
  assert "<td>test accuracy</td><td>87.5% on digits</td>" in page
  assert "<td>layers/0</td>" in page and "<table>" in page
  assert "not measured" in _report.test_accuracy_text({"test_accuracy": None})
