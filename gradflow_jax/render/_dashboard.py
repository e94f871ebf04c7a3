"""The training dashboard of a --model run (``dashboard.png``): the loss with
every recorder trigger marked, the global gradient norm (with the clipping
threshold), each leaf's update-to-weight ratio over steps as a heat map
centred on the ~1e-3 rule of thumb, and each weight matrix's sigma_max.
It reads the run's ``results.json`` layout (``watch``) only."""

from __future__ import annotations

import os
import warnings

import matplotlib.colors
import numpy as np

from gradflow_jax import _io
from gradflow_jax.render._axes import (_cmap, _integer_ticks, _natural_key, _no_value_background,
                                       _set_log, _subplots, _suptitle)
from gradflow_jax.render._model_training_plots import _leaf_layer, _train_settings

RULE = -3.0  # log10 of the update-to-weight rule of thumb
SPAN = 3.0  # the heat map's colours cover RULE +- SPAN decades
MAX_ROWS = 40  # heat-map rows (leaves) drawn; more are named in a note


def _array(values) -> np.ndarray:
  return np.asarray([[np.nan if v is None else v for v in row] for row in values], float)


def _note(ax, text: str) -> None:
  ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9,
          color="0.35", wrap=True)
  ax.set_xticks([])
  ax.set_yticks([])


def _mark_triggers(ax, run: dict) -> None:
  """A red dashed line at every step a recorder trigger fired, one legend entry."""
  steps = sorted({t["step"] for t in (run.get("watch") or {}).get("triggers", [])})
  for k, s in enumerate(steps):
    ax.axvline(s, color="firebrick", ls="--", lw=0.9, alpha=0.8,
               label=f"recorder trigger ({len(steps)} step{'s' * (len(steps) > 1)})"
               if k == 0 else None)
  if run.get("stopped_at") is not None:
    ax.axvline(run["stopped_at"], color="k", ls=":", lw=1.2, label="NaN/Inf: run stopped"
               if run.get("on_nonfinite", "stop") == "stop" else "first skipped step")


def _loss(ax, run: dict) -> None:
  loss = _array([run["loss"]])[0]
  ax.plot(np.arange(len(loss)), loss, color="C0", lw=1, label="mini-batch loss")
  finite = loss[np.isfinite(loss)]
  if finite.size and np.all(finite > 0):
    _set_log(ax)
  _mark_triggers(ax, run)
  ax.set_title("loss per step, recorder triggers marked", fontsize=10)
  ax.legend(fontsize=7)


def _grad_norm(ax, run: dict) -> None:
  norms = run["watch"]["norms"]
  g = np.sqrt(np.nansum(_array(norms["grad_norm"]) ** 2, axis=1))
  g[~np.isfinite(_array(norms["grad_norm"])).all(axis=1)] = np.nan
  ax.plot(norms["steps"], g, color="C1", lw=1, label="global ||g|| (before clipping)")
  clip = (run.get("settings") or {}).get("clip")
  if clip:
    ax.axhline(clip, color="k", ls="--", lw=1, label=f"clip_by_global_norm at {clip:g}")
  if np.isfinite(g).any() and np.nanmin(g) > 0:
    _set_log(ax)
  _mark_triggers(ax, run)
  ax.set_title("global gradient norm per step", fontsize=10)
  ax.legend(fontsize=7)


def _ratio_heatmap(fig, ax, run: dict) -> None:
  norms, names = run["watch"]["norms"], run["watch"]["leaves"]
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = np.log10(_array(norms["update_norm"]) / _array(norms["param_norm"]))
  ratio[~np.isfinite(ratio)] = np.nan
  order = sorted(range(len(names)), key=lambda i: _natural_key(names[i]))[:MAX_ROWS]
  steps = np.asarray(norms["steps"])
  edges = np.concatenate([steps - 0.5, [steps[-1] + 0.5]]) if len(steps) else [0, 1]
  hatch = _no_value_background(ax)
  mesh = ax.pcolormesh(edges, np.arange(len(order) + 1), ratio[:, order].T,
                       cmap=_cmap("RdBu_r"), norm=matplotlib.colors.Normalize(
                           RULE - SPAN, RULE + SPAN), shading="flat")
  ax.set_yticks(np.arange(len(order)) + 0.5)
  ax.set_yticklabels([names[i] for i in order], fontsize=6 if len(order) > 16 else 7)
  ax.invert_yaxis()
  bar = fig.colorbar(mesh, ax=ax, pad=0.01, extend="both")
  bar.set_label("log10 ||update|| / ||W||  (white: 1e-3)", fontsize=8)
  if np.isnan(ratio[:, order]).any():
    ax.legend(handles=[hatch], fontsize=7, loc="upper right", framealpha=0.9)
  more = len(names) - len(order)
  ax.set_title("update-to-weight ratio per leaf (red: moves fast; blue: barely moves)"
               + (f"; {more} more leaves not shown" if more > 0 else ""), fontsize=10)


def _sigma(ax, run: dict) -> None:
  spectra = run["watch"].get("spectra")
  if not spectra or not spectra["steps"]:
    _note(ax, "weight spectra not watched\n(train --model ... --watch norms,flow,spectra)")
    ax.set_title("largest singular value per weight matrix", fontsize=10)
    return
  names = run["watch"]["leaves"]
  sigma, change = _array(spectra["sigma"]), _array(spectra["change"])
  tol = run["watch"].get("spectra_tol", 1e-2)
  settled = np.isfinite(change) & (change <= tol)
  matrices = [i for i in range(len(names)) if np.isfinite(sigma[:, i]).any()]
  layers = list(dict.fromkeys(_leaf_layer(names[i]) for i in matrices))
  cmap = _cmap("viridis")
  for i in sorted(matrices, key=lambda i: _natural_key(names[i])):
    colour = cmap(0.85 * layers.index(_leaf_layer(names[i])) / max(len(layers) - 1, 1))
    ax.plot(spectra["steps"], np.where(settled[:, i], sigma[:, i], np.nan), "o-", ms=2.5,
            lw=1.2, label=names[i], color=colour)
    ax.plot(spectra["steps"], sigma[:, i], ":", lw=1, color=colour, alpha=0.7)
    ax.plot(np.asarray(spectra["steps"])[~settled[:, i]], sigma[~settled[:, i], i], "o",
            ms=4, mfc="none", color=colour)
  if (~settled[:, matrices]).any():
    ax.plot([], [], "o:", mfc="none", color="0.4",
            label=f"not settled (moved > {tol:g} in its last step): not a measurement")
  if np.isfinite(sigma).any() and np.nanmin(sigma) > 0:
    _set_log(ax)
  _mark_triggers(ax, run)
  ax.set_title("sigma_max per weight matrix (power iteration, one pair a step)", fontsize=10)
  ax.legend(fontsize=6, ncol=2 if len(matrices) > 8 else 1)


def _points(ax, steps, values, ok, colour, label, marker="o") -> None:
  """Converged values solid, the others hollow and dotted (not a measurement)."""
  steps, values, ok = np.asarray(steps), np.asarray(values, float), np.asarray(ok, bool)
  ax.plot(steps, np.where(ok, values, np.nan), f"{marker}-", ms=3.5, lw=1.3, color=colour,
          label=label)
  if (~ok & np.isfinite(values)).any():
    ax.plot(steps[~ok], values[~ok], marker, ms=5, mfc="none", color=colour)


def _sharpness(ax, run: dict) -> None:
  """The edge-of-stability picture: sharpness against the optimizer's threshold."""
  c = run["watch"].get("curvature")
  if not c or not c["steps"]:
    _note(ax, "curvature not watched\n(train --model ... --watch norms,curvature)")
    ax.set_title("sharpness against the stability threshold", fontsize=10)
    return
  steps = c["steps"]
  threshold = _array([c["threshold"]])[0]
  adam = np.isfinite(_array([c["preconditioned"]])[0]).any()
  if adam:
    _points(ax, steps, _array([c["preconditioned"]])[0], c["preconditioned_converged"], "C3",
            "preconditioned sharpness, top eigenvalue of P^-1 H")
    ax.plot(steps, threshold, "--", color="C3", lw=1, label="Adam's threshold 38 / lr")
    _points(ax, steps, _array([c["sharpness"]])[0], c["converged"], "C0",
            "sharpness, top eigenvalue of H (Adam: no threshold)", marker="s")
  else:
    _points(ax, steps, _array([c["sharpness"]])[0], c["converged"], "C0",
            "sharpness, top eigenvalue of H")
    ax.plot(steps, threshold, "--", color="C0", lw=1, label="stability threshold 2 / lr"
            + ("" if (run.get("settings") or {}).get("optimizer") != "momentum"
               else " x (1 + momentum)"))
  ok = np.asarray(c["converged"], bool)
  if not ok.all():
    ax.plot([], [], "o", mfc="none", color="0.4", label="not converged: not a measurement")
  values = _array([c["sharpness"], c["preconditioned"], threshold])
  if np.nanmin(np.where(values > 0, values, np.nan)) > 0 and (values[np.isfinite(values)] > 0).all():
    _set_log(ax)
  _mark_triggers(ax, run)
  ax.set_title("sharpness against the stability threshold (the step's batch)", fontsize=10)
  ax.legend(fontsize=7)


def _noise(ax, run: dict) -> None:
  n = run["watch"].get("noise")
  if not n or not n["steps"]:
    _note(ax, "gradient noise not watched\n(train --model ... --watch norms,noise)")
    ax.set_title("gradient noise scale B_simple", fontsize=10)
    return
  b, err = _array([n["b_simple"]])[0], _array([n["stderr"]])[0]
  b = np.where(b > 0, b, np.nan)  # <= 0: noise swamps the signal, nothing resolved
  if not np.isfinite(b).any():
    _note(ax, "B_simple not resolved on any measured step: the window's |G|^2 estimate\n"
              "was <= 0 (noise swamps the signal; a larger batch may resolve it)")
    ax.set_title("gradient noise scale B_simple", fontsize=10)
    return
  steps = np.asarray(n["steps"])
  ax.plot(steps, b, "o-", ms=3.5, color="C2", label="B_simple over the last 16 measurements")
  ax.fill_between(steps, np.maximum(b - err, b / 10), b + err, color="C2", alpha=0.2, lw=0,
                  label="+- one standard error (a lower bound)")
  batch = (run.get("settings") or {}).get("batch_size")
  if batch:
    ax.axhline(batch, color="k", ls="--", lw=1, label=f"batch size {batch}")
  if np.isfinite(b).any():
    _set_log(ax)
  ax.set_title("gradient noise scale: a batch larger than B_simple gains little", fontsize=10)
  ax.legend(fontsize=7)


def plot_dashboard(run: dict, path=None):
  """The dashboard of a --model run's results (``results.json``'s layout,
  with the ``norms`` tier watched); with the curvature or noise tier, a third
  row: sharpness against its threshold, and B_simple beside the batch size.
  ``path=None``: returns the Figure."""
  if not (run.get("watch") or {}).get("norms"):
    raise ValueError("expected a run that watched the norms tier (--watch norms,...), got "
                     f"tiers {(run.get('watch') or {}).get('tiers')}")
  extra = any((run["watch"].get(t) or {}).get("steps") for t in ("curvature", "noise"))
  fig, axes = _subplots(3 if extra else 2, 2, figsize=(14, 12.5 if extra else 8.5),
                        layout="constrained")
  _loss(axes[0, 0], run)
  _grad_norm(axes[0, 1], run)
  _ratio_heatmap(fig, axes[1, 0], run)
  _sigma(axes[1, 1], run)
  if extra:
    _sharpness(axes[2, 0], run)
    _noise(axes[2, 1], run)
  for ax in axes.flat:
    if not (ax.lines or ax.collections):  # a panel holding only a note
      continue
    ax.set_xlabel("step")
    if ax is not axes[1, 0]:
      ax.grid(alpha=0.3, which="both")
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      _integer_ticks(ax)
  _suptitle(fig, f"Training dashboard: {os.path.basename(run.get('model', 'model'))} on "
                 f"{run.get('data', 'data')}", _train_settings(run))
  return _io.save_figure(fig, path)
