"""Figures of the library's results, for notebooks and scripts.

Each function takes what a library call returned and draws the same figure
the CLI writes. With ``path=None`` (the default) it returns the matplotlib
``Figure`` (a notebook shows it inline, once); with a path it writes a PNG
atomically and returns None. pyplot is never used: no figure is left open
and the user's backend is untouched.

  analysis = gf.analyze_model(model, x, y)
  gf.plots.model_taps(analysis)            # inline in a notebook
  gf.plots.depth_study(gf.depth_study(make, settings), "my family")
"""

from __future__ import annotations

from gradflow_jax.render import (_curvature_plots, _dashboard, _depth_plots, _eos_plots,
                                 _forensics_plots, _model_plots, _model_training_plots)


def dashboard(run, path=None):
  """A ``train_model`` run (its result, or the ``results.json`` it wrote):
  loss with the recorder's triggers, global gradient norm, update-to-weight
  ratio per leaf over steps (heat map) and sigma_max per weight matrix."""
  if hasattr(run, "as_dict"):
    run = {"model": "model", "data": "data", **run.as_dict()}
  return _dashboard.plot_dashboard(run, path)


def edge_of_stability(result, path=None):
  """``train --experiment edge-of-stability``'s results: the full-batch loss
  and the sharpness per learning rate, each against its 2 / lr."""
  return _eos_plots.plot_edge_of_stability(result, path)


def model_taps(analysis, path=None):
  """Per tap of :func:`analyze_model`'s result: std, ||dL/d tap|| and the
  local Jacobian norm (unconverged values marked, not drawn)."""
  return _model_plots.plot_taps(analysis.stats, analysis.jacobians, path)


def depth_sweep(result, path=None):
  """:func:`run_sweep`'s result: spectral norm and mean squared singular value
  of dh_l/dx against depth, mean-field theory dashed."""
  return _depth_plots.plot_depth_sweep(result["points"], path)


def depth_study(result, label: str = "", path=None):
  """:func:`depth_study`'s result: the family's growth with depth against
  its laws."""
  return _model_plots.plot_depth_study(result, label, path)


def depth_layer_heatmap(result, label: str = "", path=None):
  """:func:`depth_study`'s result: per-tap values (rows) at every depth."""
  return _model_plots.plot_depth_layer_heatmap(result, label, path)


def coordinate_check(result, label: str = "", path=None):
  """:func:`width_study`'s result: activation size and its change after a
  few steps against width (the muP coordinate check)."""
  return _model_plots.plot_coordinate_check(result, label, path)


def tap_gradients_over_steps(steps, flows, path=None):
  """log10 ||dL/d tap|| of every tap (rows) at every logged step (columns)
  from the :class:`FlowStep` values a monitored loop collected (host copies,
  e.g. ``jax.device_get(flow)``); steps that were not measured are blank."""
  import numpy as np
  flows = list(flows)
  if not flows or len(flows) != len(steps):
    raise ValueError(f"expected one FlowStep per step, got {len(flows)} for {len(steps)} steps")
  names = list(flows[0].names)
  grads = [np.asarray(f.tap_grad_norm, float) if bool(f.measured)
           else np.full(len(names), np.nan) for f in flows]
  run = {"taps": names, "logged_steps": [int(s) for s in steps],
         "tap_stats": {n: {"grad_norm": [float(g[i]) for g in grads]}
                       for i, n in enumerate(names)}}
  return _model_training_plots.plot_tap_heatmap(run, path)


def forensics(analysis: dict, path=None):
  """:func:`gradflow_jax.watch.analyse_forensics`'s result: the loss and every
  leaf's gradient and update norms over the recorder's window, the first
  movers named and their onsets marked."""
  return _forensics_plots.plot_forensics(analysis, path)


def hessian_spectrum(result: dict, path=None):
  """:func:`gradflow_jax.studies.curvature_study`'s result (or the
  ``results.json`` of ``analyze.py curvature``): the Hessian's eigenvalue
  density (SLQ, log scale) with the top eigenvalues marked (dotted grey
  where not converged: a lower bound) and 2/lr where an lr was given, beside
  the top eigenvalue of every parameter leaf's diagonal block."""
  return _curvature_plots.plot_hessian_spectrum(result, path)
