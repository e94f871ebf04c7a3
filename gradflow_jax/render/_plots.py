"""PNG renderers. They draw numbers already measured; they compute nothing."""

from __future__ import annotations

import os
import warnings

import matplotlib
import matplotlib.figure
import matplotlib.lines
import jax.numpy as jnp
import numpy as np

from gradflow_jax import _io
from gradflow_jax.models import _activations

_MARKERS = "osD^vP*Xph<>"


def _subplots(*grid, figsize=None, **kw):
  """``plt.subplots`` without pyplot: a Figure of its own, never registered
  with pyplot (nothing shown or kept open behind the user's back; a notebook
  displays the returned figure once)."""
  fig = matplotlib.figure.Figure(figsize=figsize)
  return fig, fig.subplots(*grid, **kw)


def _no_finite_note(ax, values) -> None:
  """Writes on an axis whose every value is non-finite (NaN weights) that it
  is empty for that reason, not blank by mistake."""
  if not any(np.isfinite(np.asarray(v, float)).any() for v in values):
    ax.text(0.5, 0.5, "all values non-finite", transform=ax.transAxes, ha="center",
            va="center", color="firebrick")


def _by_activation(runs):
  """Runs grouped by activation (first-seen order): one column of small
  multiples each, so runs that coincide (relu and leaky_relu at init) are not
  drawn over one another."""
  groups = {}
  for r in runs:
    groups.setdefault(r["activation"], []).append(r)
  return list(groups.items())


def _init_line(run) -> dict:
  """Line style by init: the recommended one solid blue, the shared one dashed orange."""
  shared = run["role"] != "recommended"
  return dict(ls="--" if shared else "-", color="C1" if shared else "C0", marker="o", ms=3)


def _small_multiples(runs, rows: list[tuple[str, str]], title: str, draw):
  """A grid: a row per panel (``(key, ylabel)``), a column per activation,
  y shared along each row. ``draw(ax, key, run)`` draws one run's line; the
  recommended init is solid, the shared init dashed (named in the legend).
  Returns the figure and its (rows, columns) axes."""
  groups = _by_activation(runs)
  cols = len(groups)
  fig, axes = _subplots(len(rows), cols, figsize=(max(6.0, 2.7 * cols + 1.0),
                                                       2.5 * len(rows) + 0.9),
                           squeeze=False, sharey="row", sharex="col")
  for c, (act, members) in enumerate(groups):
    rec = [str(r.get("init")) for r in members if r["role"] == "recommended"]
    axes[0, c].set_title(f"{act} ({rec[0]})" if rec and rec[0] != "None" else act)
    for (key, label), ax in zip(rows, axes[:, c]):
      for r in members:
        draw(ax, key, r)
      ax.grid(alpha=0.3, which="both")
  for (key, label), row in zip(rows, axes):
    row[0].set_ylabel(label)
  fig.suptitle(title)
  handles = [matplotlib.lines.Line2D([], [], **_init_line({"role": "recommended"}),
                        label="recommended init (in each title)")]
  shared = sorted({str(r.get("init")) for r in runs if r["role"] != "recommended"})
  if shared:
    handles.append(matplotlib.lines.Line2D([], [], **_init_line({"role": "shared"}),
                              label=f"{' / '.join(shared)} init"))
  fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9,
             bbox_to_anchor=(0.5, -0.02), frameon=False)
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  return fig, axes


def plot_activation_stats(runs: list[dict], path):
  """std, saturation and dead fractions against layer index: a column per
  activation, a row per statistic; the diagnosis thresholds drawn on the
  fraction rows."""
  from gradflow_jax.diagnosis import _diagnose
  thresholds = {"saturation_fraction": _diagnose.SATURATION_WARN_FRACTION,
                "dead_fraction": _diagnose.DEAD_WARN_FRACTION}
  rows = [("std", "activation std\n(ddof=1)"), ("saturation_fraction", "saturated\nfraction"),
          ("dead_fraction", "dead-unit\nfraction")]

  def draw(ax, key, r):
    v = np.asarray(r["activation_stats"][key], float)
    ax.plot(np.arange(len(v)), _positive(v) if key == "std" else v, **_init_line(r))
  fig, axes = _small_multiples(runs, rows, "Activation statistics per hidden layer", draw)
  for (key, _), row in zip(rows, axes):
    if key == "std":
      row[0].set_yscale("log")
    else:
      row[0].set_ylim(-0.03, 1.03)
    for ax, (act, members) in zip(row, _by_activation(runs)):
      if key in thresholds:
        t = thresholds[key]
        ax.axhline(t, color="firebrick", ls=":", lw=1)
        ax.text(0.98, t, f"warn > {t:g}", transform=ax.get_yaxis_transform(), ha="right",
                va="bottom", fontsize=7, color="firebrick")
      _no_finite_note(ax, [r["activation_stats"][key] for r in members])
  for ax in axes[-1]:
    ax.set_xlabel("hidden layer")
  return _io.save_figure(fig, path)


def _positive(v):
  v = np.asarray(v, float)
  return np.where(np.isfinite(v) & (v > 0), v, np.nan)


def plot_grad_norms(runs: list[dict], path):
  """||dL/dz_l|| per hidden layer and ||dL/dW|| per dense layer, log scale: a
  column per activation."""
  rows = [("preact_grad_norm", "||dL/dz||\nper hidden layer"),
          ("weight_grad_norm", "||dL/dW|| per dense\nlayer (last: output)")]

  def draw(ax, key, r):
    ax.plot(_positive(r["gradient_stats"][key]), **_init_line(r))
  fig, axes = _small_multiples(
      runs, rows, "Gradient norms at initialization: falling toward layer 0 = vanishing, "
      "rising = exploding", draw)
  for (key, _), row in zip(rows, axes):
    row[0].set_yscale("log")
    for ax, (act, members) in zip(row, _by_activation(runs)):
      _no_finite_note(ax, [_positive(r["gradient_stats"][key]) for r in members])
  for ax in axes[-1]:
    ax.set_xlabel("layer index")
  return _io.save_figure(fig, path)


def plot_activation_curves(names, path, zmax: float = 6.0):
  """Each activation and its derivative. Red: the saturated tails (what the
  saturation fraction counts); orange: any other region where |phi'| < 5% of
  its maximum (GELU/SiLU's dip, leaky ReLU's negative side); grey: phi' = 0
  (a unit always there is dead)."""
  names = list(dict.fromkeys(_activations.canonical_name(n) for n in names))
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = _subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
  z = np.linspace(-zmax, zmax, 1201, dtype=np.float32)
  band = dict(transform=None, alpha=0.2, lw=0)
  for ax, name in zip(axes.flat, names):
    act = _activations.get_activation(name)
    d = np.asarray(act.derivative(jnp.asarray(z), None))
    ax.plot(z, np.asarray(act(jnp.asarray(z))), color="C0", label="phi(z)")
    ax.plot(z, d, color="C1", label="phi'(z)")
    lo, hi = act.saturation_bounds
    tails = (z <= lo) | (z >= hi)
    zero = d == 0
    low = (np.abs(d) < 0.05 * act.max_derivative) & ~tails & ~zero
    band["transform"] = ax.get_xaxis_transform()
    for mask, colour, label in ((tails, "red", "saturated (counted)"),
                                (low, "orange", "other |phi'| < 5%"),
                                (zero & ~tails, "grey", "phi' = 0")):
      if mask.any():
        ax.fill_between(z, 0, 1, where=mask, color=colour, label=label, **band)
    ax.axhline(act.max_derivative, color="C1", ls=":", lw=0.8, label="max phi'")
    ax.set_title(f"{name}: max phi' = {act.max_derivative:.3g}")
    ax.set_ylim(-1.6, 3.2)
    ax.set_xlim(-zmax, zmax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left")
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  fig.suptitle("Activations and their derivatives. Red: saturated tails (what the saturated "
               "fraction counts); orange: other |phi'| < 5% of its maximum; grey: phi' = 0",
               fontsize=10)
  fig.tight_layout()
  return _io.save_figure(fig, path)


def _band(ax, x, samples, colour, label, log=True) -> np.ndarray:
  """Median line and 10-90% band of ``samples`` (..., len(x)) over leading
  axes. Returns the samples as drawn, (n, len(x)), NaN where one could not
  be: non-finite, or (on a log axis) 0 (underflow) or negative."""
  flat = np.asarray(samples, float).reshape(-1, len(x))
  flat = np.where(np.isfinite(flat), flat, np.nan)
  if log:
    flat = np.where(flat > 0, flat, np.nan)
  with np.errstate(all="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: a gap, not a warning
    lo, med, hi = np.nanpercentile(flat, [10, 50, 90], axis=0)
  ax.plot(x, med, color=colour, label=label)
  ax.fill_between(x, lo, hi, color=colour, alpha=0.2, lw=0)
  return flat


def _fit_log_limits(ax, drawn: list, fallback: list = ()) -> None:
  """Log y limits spanning every finite positive value in ``drawn`` (or in
  ``fallback`` when it has none): matplotlib's autoscale collapses when
  fills hold NaN gaps and values span 60 decades."""
  for arrays in (drawn, fallback):
    values = np.concatenate([np.ravel(np.asarray(v, float)) for v in arrays] or [[]])
    values = values[np.isfinite(values) & (values > 0)]
    if values.size:
      lo, hi = max(values.min(), 1e-300), min(values.max(), 1e300)
      ax.set_ylim(lo / 3, hi * 3 if hi > lo else lo * 10)
      return


def plot_depth_sweep(points: list[dict], path):
  """Spectral norm and mean squared singular value of dh_l/dx against depth l:
  median over seeds and examples, 10-90% band, mean-field theory dashed."""
  fig, axes = _subplots(1, 2, figsize=(14, 5.2))
  cmap = matplotlib.colormaps.get_cmap("tab10")
  drawn, theory = [[], []], []
  for i, p in enumerate(points):
    c = cmap(i % 10)
    drawn[0].append(_band(axes[0], p["spectrum_depths"], p["spectral_norm"], c, p["label"]))
    drawn[1].append(_band(axes[1], p["depths"], p["mean_sq_singular_value"], c, p["label"]))
    theory_line = np.asarray(p["theory_mean_sq_singular_value"], float)
    if np.isfinite(theory_line).any():
      axes[1].plot(p["depths"], theory_line, "--", color=c, lw=1.2)
      theory.append(theory_line)
  axes[1].plot([], [], "k--", label="mean-field theory (mean)")
  axes[1].fill_between([], [], [], color="grey", alpha=0.3, lw=0,
                       label="line: median, band: 10-90% over seeds and examples")
  for ax, arrays, extra in zip(axes, drawn, ([], theory)):
    _fit_log_limits(ax, arrays, fallback=extra)  # theory beyond the measurements runs off
    n = sum(int(np.isnan(a).sum()) for a in arrays)
    if n:
      ax.text(0.01, 0.01, f"{n} values not drawn: underflowed to 0 or not finite",
              transform=ax.transAxes, fontsize=8, color="firebrick", va="bottom")
  for ax, title in zip(axes, ["spectral norm of dh_l/dx", "mean squared singular value of dh_l/dx"]):
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("depth l")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
  handles, labels = axes[1].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8,
             bbox_to_anchor=(0.5, -0.02 - 0.035 * (len(labels) // 3)), frameon=False)
  fig.suptitle("Input-output Jacobians across depth: flat at 1 = dynamical isometry; "
               "growing = exploding, falling = vanishing")
  return _io.save_figure(fig, path)


def plot_layer_jacobians(curves: list[dict], path):
  """||dh_l/dh_(l-1)|| per layer (median over examples, 10-90% band)."""
  fig, ax = _subplots(figsize=(9, 4.8))
  cmap = matplotlib.colormaps.get_cmap("tab10")
  for i, c in enumerate(curves):
    norms = np.asarray(c["norms"], float)
    conv = np.asarray(c.get("converged", np.ones(norms.shape, bool)), bool)
    label = c["label"]
    if (~conv).any():  # an estimate that did not converge is not a measurement
      norms = np.where(conv, norms, np.nan)
      label += f" ({int((~conv).sum())} unconverged, not drawn)"
    layers = np.asarray(c.get("layers", np.arange(norms.shape[-1])))
    zero = np.all(norms == 0, axis=0) if norms.ndim > 1 else norms == 0
    if zero.any():  # a log axis cannot show 0: say where the curve ends and why
      label += (f" (0 at {int(zero.sum())} layers from layer {int(layers[zero][0])} on: "
                "the signal reached 0)")
    _band(ax, layers, norms, cmap(i % 10), label)
    chi1 = c.get("chi1")
    if chi1 is not None and np.isfinite(chi1) and chi1 > 0:
      ax.axhline(np.sqrt(chi1), color=cmap(i % 10), ls="--", lw=0.9)
  ax.plot([], [], "k--", lw=0.9, label="mean-field RMS singular value sqrt(chi_1)")
  ax.set_yscale("log")
  ax.set_xlabel("layer l")
  ax.set_ylabel("||dh_l / dh_(l-1)||_2")
  ax.set_title("Per-layer Jacobian spectral norms (Lanczos; median, 10-90% band over "
               "examples). The norm of a random layer\nsits above its RMS singular value "
               "(He-ReLU: ~2.3 vs 1); compare each curve with its dashed line", fontsize=9)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  return _io.save_figure(fig, path)


def plot_rnn_through_time(runs: list[dict], path):
  """Left: ||dh_T/dh_t|| against T - t per scale of W, Pascanu bound dashed.
  Right: the norm over the whole sequence against the scale of W."""
  fig, axes = _subplots(1, 2, figsize=(14, 5))
  cmap = matplotlib.colormaps.get_cmap("viridis")
  for i, r in enumerate(runs):
    c = cmap(i / max(len(runs) - 1, 1))
    norms = np.asarray(r["jacobian_norm"], float)[..., ::-1]  # index = T - t - 0
    lag = np.arange(norms.shape[-1])
    _band(axes[0], lag, norms, c, f"{r['scale_kind']} {r['scale']:.3g}")
    bound = np.asarray(r["pascanu_bound"], float)[::-1]
    axes[0].plot(lag, np.where(bound > 0, bound, np.nan), "--", color=c, lw=0.9)
  axes[0].plot([], [], "k--", label="Pascanu bound (gamma ||W||)^(T-t)")
  axes[0].set_yscale("log")
  axes[0].set_xlabel("T - t (steps back in time)")
  axes[0].set_title("||dh_T / dh_t||_2 (median over sequences)")
  axes[0].legend(fontsize=7, ncol=2)
  scales = [r["scale"] for r in runs]
  for key, label, marker in (("jacobian_norm", "||dh_T/dh_0||", "o"),
                             ("state_grad_norm", "||dL/dh_0||", "s")):
    vals = [np.nanmedian(np.asarray(r[key], float)[:, 0]) for r in runs]
    axes[1].plot(scales, np.where(np.asarray(vals) > 0, vals, np.nan), marker=marker, label=label)
  axes[1].axvline(1.0 / runs[0]["gamma"], color="grey", ls=":", lw=1,
                  label="||W|| = 1/gamma (bound = 1)")
  axes[1].set_yscale("log")
  axes[1].set_xlabel(f"{runs[0]['scale_kind']} of W")
  axes[1].set_title("Over the whole sequence. Below 1/gamma it must vanish; above, it may\n"
                    "explode or still vanish (the bound is necessary, not sufficient)", fontsize=10)
  axes[1].legend(fontsize=8)
  for ax in axes:
    ax.grid(alpha=0.3, which="both")
  fig.suptitle(f"Vanilla {runs[0]['activation']} RNN: gradients through time", y=1.04)
  return _io.save_figure(fig, path)


def plot_training(runs: list[dict], path):
  """Loss, test accuracy, the first hidden layer's ||dL/dz|| and the global
  gradient norm over training, a line per run."""
  fig, axes = _subplots(2, 2, figsize=(13, 8))
  for i, r in enumerate(runs):
    c = matplotlib.colormaps.get_cmap("tab10")(i % 10)
    logs = r["logs"]
    steps = np.arange(len(logs["loss"]))
    axes[0, 0].plot(steps, _positive(logs["loss"]), color=c, label=r["label"])
    axes[0, 1].plot(r["eval_steps"], r["eval_accuracy"], "o-", color=c, ms=3)
    axes[1, 0].plot(steps, _positive(np.asarray(logs["preact_grad_norm"])[:, 0]), color=c)
    axes[1, 1].plot(steps, _positive(logs["grad_norm"]), color=c)
    clipped = np.nonzero(np.asarray(logs["clipped"]))[0]
    if clipped.size:
      axes[1, 1].plot(clipped, _positive(np.asarray(logs["grad_norm"])[clipped]), "x", color=c,
                      ms=4, label=f"{r['label']}: clipped")
    if r.get("stopped_at") is not None:
      axes[0, 0].axvline(r["stopped_at"], color=c, ls=":", lw=1)
    if r.get("clip"):
      axes[1, 1].axhline(r["clip"], color=c, ls="--", lw=0.9,
                         label=f"{r['label']}: clip threshold {r['clip']:g}")
  stopped = any(r.get("stopped_at") is not None for r in runs)
  titles = [("mini-batch training loss" + (" (dotted: the NaN/Inf guard stopped the run)"
                                           if stopped else ""), True),
            ("test accuracy", False), ("||dL/dz|| at the first hidden layer", True),
            ("global gradient norm before clipping (x: clipping fired)", True)]
  for ax, (title, log) in zip(axes.flat, titles):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, which="both")
    if log:
      ax.set_yscale("log")
  axes[0, 1].set_ylim(0, 1)
  axes[0, 0].legend(fontsize=8)
  if axes[1, 1].get_legend_handles_labels()[0]:
    axes[1, 1].legend(fontsize=7)
  fig.tight_layout()
  return _io.save_figure(fig, path)


def plot_grad_heatmap(runs: list[dict], path):
  """Layer x step heat maps of ||dL/dz_l|| / ||dL/dz_last||, the backward
  signal relative to the last hidden layer at the same step (log colour scale
  symmetric about 1), one per run: a loss that falls as the run converges
  scales every layer alike and leaves the map unchanged; only a signal that
  shrinks (or grows) toward the input shows."""
  from matplotlib.colors import LogNorm
  maps = []
  for r in runs:
    g = np.asarray(r["logs"]["preact_grad_norm"], float).T  # (layers, steps)
    with np.errstate(all="ignore"):
      rel = g / g[-1:]
    maps.append(np.where(np.isfinite(rel) & (rel > 0), rel, np.nan))
  vals = np.concatenate([np.abs(np.log10(m[np.isfinite(m)])) for m in maps] or [np.ones(1)])
  span = 10 ** max(float(np.percentile(vals, 99.5)) if vals.size else 1.0, 0.5)
  norm = LogNorm(vmin=1 / span, vmax=span)
  fig, axes = _subplots(len(runs), 1, figsize=(11, 2.4 * len(runs) + 0.8), squeeze=False,
                           gridspec_kw={"hspace": 0.55})
  for ax, r, m in zip(axes[:, 0], runs, maps):
    im = ax.imshow(m, aspect="auto", origin="lower", norm=norm, cmap="RdBu_r",
                   interpolation="nearest")
    ax.set_ylabel("layer")
    ax.set_title(r["label"], fontsize=10, loc="left")
  axes[-1, 0].set_xlabel("step")
  fig.colorbar(im, ax=axes[:, 0].tolist(), label="||dL/dz_l|| / ||dL/dz_last||", shrink=0.9)
  fig.suptitle("Backward signal per layer over training, relative to the last hidden layer "
               "(blue: vanishing toward the input, red: growing)", fontsize=11)
  return _io.save_figure(fig, path)


def plot_fractions(runs: list[dict], path):
  """Dead-unit and saturated fractions over training, mean over layers (solid)
  and the worst layer (dashed), beside test accuracy (a run the guard
  stopped ends where it stopped)."""
  fig, axes = _subplots(1, 3, figsize=(17, 4.6))
  for i, r in enumerate(runs):
    c = matplotlib.colormaps.get_cmap("tab10")(i % 10)
    for ax, field in zip(axes, ("dead_fraction", "saturation_fraction")):
      v = np.asarray(r["logs"][field], float)
      ax.plot(v.mean(1), color=c, label=r["label"])
      ax.plot(v.max(1), "--", color=c, lw=0.9)
    axes[2].plot(r["eval_steps"], r["eval_accuracy"], "o-", ms=3, color=c, label=r["label"])
    if r.get("stopped_at") is not None:
      for ax in axes:
        ax.axvline(r["stopped_at"], color=c, ls=":", lw=1)
  for ax, title in zip(axes, ("dead-unit fraction", "saturated fraction")):
    ax.set_title(f"{title} (solid: mean over layers, dashed: worst layer)", fontsize=10)
  axes[2].set_title("test accuracy (dotted: NaN/Inf guard stopped the run)"
                    if any(r.get("stopped_at") is not None for r in runs) else "test accuracy",
                    fontsize=10)
  for ax in axes:
    ax.set_xlabel("step")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
  axes[2].legend(fontsize=8)
  return _io.save_figure(fig, path)


def jacobian_summary(jac):
  """Per tap: median over examples of the local Jacobian norm, with NaN where a
  tap has no source or where any example's value did not converge (so an
  unconverged value is never drawn as a measurement), and the unconverged mask."""
  norm = np.asarray(jac.norm, float)
  conv = np.asarray(jac.converged, bool)
  with warnings.catch_warnings():  # all-NaN columns (taps without a source) give NaN
    warnings.simplefilter("ignore", RuntimeWarning)
    med = np.nanmedian(np.where(np.isfinite(norm), norm, np.nan), axis=0)
  unconverged = np.isfinite(med) & ~conv.all(0)
  return np.where(unconverged, np.nan, med), unconverged


def plot_taps(stats, jac, path):
  """Per tap of a model: activation std, ||dL/dtap|| and the local Jacobian
  norm (median over examples; unconverged values left out and marked)."""
  fig, ax = _subplots(figsize=(max(7, 0.45 * len(stats.names)), 4.8))
  idx = np.arange(len(stats.names))
  ax.plot(idx, _positive(stats.activations.std), "o-", label="std of the tapped tensor")
  ax.plot(idx, _positive(stats.tap_grad_norm), "s-", label="||dL/d tap|| (backward signal)")
  if jac is not None:
    med, unconverged = jacobian_summary(jac)
    ax.plot(idx, _positive(med), "^", ls="none",
            label="||d tap / d its source tap||_2 (median over examples)")
    if unconverged.any():
      ax.plot(idx[unconverged], np.ones(unconverged.sum()), "x", color="red",
              label="Jacobian not converged (not drawn)")
  ax.set_yscale("log")
  ax.set_xticks(idx, stats.names, rotation=60, ha="right", fontsize=7)
  ax.grid(alpha=0.3, which="both")
  # above the axes, so no marker is hidden behind it
  ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
  fig.suptitle("Per tap, in the order the model records them")
  fig.tight_layout()
  return _io.save_figure(fig, path)


def plot_model_training(run: dict, path):
  """A --model run: the mini-batch loss per step and the global gradient
  norm at the logged steps."""
  fig, axes = _subplots(1, 2, figsize=(12, 4.2))
  loss = np.asarray(run["loss"], float)
  axes[0].plot(np.arange(len(loss)), loss, color="C0", lw=1)
  if np.all(loss[np.isfinite(loss)] > 0):
    axes[0].set_yscale("log")
  if run["stopped_at"] is not None:
    axes[0].axvline(run["stopped_at"], color="firebrick", ls=":", label="NaN/Inf: stopped")
    axes[0].legend(fontsize=8)
  axes[0].set_title("mini-batch training loss"
                    + (f" ({run['loss_name']})" if run.get("loss_name") else ""))
  axes[0].set_xlabel("step")
  norms = _positive([np.nan if v is None else v for v in run["global_norm"]])
  axes[1].plot(run["logged_steps"], norms, "o-", color="C1", ms=3)
  axes[1].set_yscale("log")
  axes[1].set_title("global gradient norm (before clipping), logged steps")
  axes[1].set_xlabel("step")
  _no_finite_note(axes[1], [norms])
  for ax in axes:
    ax.grid(alpha=0.3, which="both")
  fig.suptitle(f"Training {os.path.basename(run['model'])} on {run['data']}")
  fig.tight_layout()
  return _io.save_figure(fig, path)


def plot_tap_heatmap(run: dict, path):
  """log10 ||dL/d tap|| for every tap (rows, in forward order) at every
  logged step (columns)."""
  names = run["taps"]
  grid = np.asarray([[np.nan if v is None else v for v in run["tap_stats"][n]["grad_norm"]]
                     for n in names], float)
  with np.errstate(divide="ignore", invalid="ignore"):
    logs = np.where(np.isfinite(grid) & (grid > 0), np.log10(grid), np.nan)
  steps = run["logged_steps"]
  fig, ax = _subplots(figsize=(min(14, 4 + 0.25 * len(steps)), 1.5 + 0.28 * len(names)))
  if np.isfinite(logs).any():
    image = ax.imshow(logs, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="log10 ||dL/d tap||")
  else:
    ax.text(0.5, 0.5, "all values non-finite", transform=ax.transAxes, ha="center",
            color="firebrick")
  stride = max(1, len(names) // 40)
  ax.set_yticks(range(0, len(names), stride), [names[i] for i in range(0, len(names), stride)],
                fontsize=7)
  ticks = range(0, len(steps), max(1, len(steps) // 12))
  ax.set_xticks(list(ticks), [str(steps[i]) for i in ticks])
  ax.set_xlabel("step")
  ax.set_title("Backward signal at every tap over training (top: first tap; a row far darker "
               "than the rest stays vanishing)", fontsize=10)
  return _io.save_figure(fig, path)


def plot_update_ratios(run: dict, path):
  """||dW|| / ||W|| per parameter leaf at the logged steps, with the ~1e-3
  rule of thumb and the finding thresholds."""
  from gradflow_jax.studies import _model_train
  from gradflow_jax.watch import _watch
  fig, ax = _subplots(figsize=(10, 4.6))
  leaves = run["update_ratio"]
  drawn = []
  for i, (name, values) in enumerate(leaves.items()):
    v = _positive([np.nan if x is None else x for x in values])
    drawn.append(v)
    ax.plot(run["logged_steps"], v, "-", marker=_MARKERS[i % len(_MARKERS)], ms=3, lw=1,
            label=name if len(leaves) <= 12 else None)
  ax.set_yscale("log")
  ax.axhline(_watch.UPDATE_RATIO_RULE, color="k", ls="--", lw=1, label="rule of thumb 1e-3")
  for bound in (_model_train.UPDATE_RATIO_LOW, _model_train.UPDATE_RATIO_HIGH):
    ax.axhline(bound, color="firebrick", ls=":", lw=1)
  ax.plot([], [], color="firebrick", ls=":", label="finding thresholds")
  _no_finite_note(ax, drawn)
  ax.set_xlabel("step")
  ax.set_title("Update-to-weight ratio ||dW|| / ||W|| per parameter"
               + ("" if len(leaves) <= 12 else f" ({len(leaves)} leaves, unlabelled)"))
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
  return _io.save_figure(fig, path)


def plot_histograms_over_steps(series: dict, steps: list, what: str, path,
                               max_taps: int = 12) -> None:
  """Small multiples, one per tap (the first ``max_taps`` in forward order):
  the share of entries in each signed-log bin (rows, ``HISTOGRAM_EDGES``) at
  each logged step (columns)."""
  from gradflow_jax.watch import _watch
  names = list(series)[:max_taps]
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = _subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
  edges = _watch.HISTOGRAM_EDGES
  centre = len(edges) // 2  # the index of the edge at 0
  image = None
  for ax, name in zip(axes.flat, names):
    counts = np.asarray(series[name], float).T  # (bins, steps)
    total = counts.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
      share = np.where(total > 0, counts / total, np.nan)
      shown = np.where(share > 0, share, np.nan)
    image = ax.imshow(shown, aspect="auto", origin="lower", cmap="magma",
                      norm=matplotlib.colors.LogNorm(1e-4, 1), interpolation="nearest")
    if not np.isfinite(shown).any():
      ax.text(0.5, 0.5, "no finite entries", transform=ax.transAxes, ha="center",
              color="firebrick")
    occupied = np.nonzero(counts.sum(axis=1) > 0)[0]
    lo, hi = (occupied.min(), occupied.max() + 1) if occupied.size else (0, len(edges) - 1)
    ax.set_ylim(lo - 0.5, hi - 0.5)
    # tick at edges that are whole decades (and at 0), at most 7 in view
    decade = [t for t in range(lo, hi + 1)
              if t == centre or float(np.log10(abs(edges[t]))).is_integer()]
    step = max(1, -(-len(decade) // 7))
    shown = decade[::step]
    if centre in decade and centre not in shown:  # 0 is always labelled
      nearest = min(shown, key=lambda t: abs(t - centre))
      shown = sorted((set(shown) - {nearest}) | {centre})
    decade = shown
    ax.set_yticks([t - 0.5 for t in decade],
                  ["0" if t == centre else f"{edges[t]:+.0e}".replace("e+0", "e").replace(
                      "e-0", "e-") for t in decade], fontsize=6)
    xt = range(0, len(steps), max(1, len(steps) // 5))
    ax.set_xticks(list(xt), [str(steps[i]) for i in xt], fontsize=7)
    ax.set_title(name, fontsize=8)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  if image is not None:
    fig.colorbar(image, ax=axes.ravel().tolist(), label="share of entries", shrink=0.8)
  more = f" (first {max_taps} of {len(series)} taps)" if len(series) > max_taps else ""
  fig.suptitle(f"{what} over training: share of entries per signed-log bin (y; the row at 0 "
               f"holds exact zeros) at each logged step (x){more}", fontsize=10)
  return _io.save_figure(fig, path)


def _by_depth(result: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
  """(depths, samples (n, depths)): every seed x example of ``key`` per depth."""
  depths = np.asarray([d["depth"] for d in result["depths"]])
  cols = [np.asarray(d[key], float).reshape(-1) for d in result["depths"]]
  n = max(len(c) for c in cols)
  samples = np.full((n, len(cols)), np.nan)
  for j, c in enumerate(cols):
    samples[:len(c), j] = c
  return depths, samples


def plot_depth_study(result: dict, label: str, path):
  """A family across depth: spectral norm and mean squared singular value of
  the input-output Jacobian, and ||dL/d first tap|| / ||dL/d last tap||;
  median over seeds x examples with a 10-90% band, theory dashed."""
  d0 = result["depths"][0]
  what = f"d {d0['target']} / d {d0['source']}"
  fig, axes = _subplots(1, 3, figsize=(17, 5.2))
  c = matplotlib.colormaps.get_cmap("tab10")(0)
  panels = (("spectral_norm", f"spectral norm of J = {what}"),
            ("mean_sq_singular_value", "mean squared singular value of J"),
            ("first_over_last_grad_norm", "||dL/d first tap|| / ||dL/d last tap||"))
  for ax, (key, title) in zip(axes, panels):
    depths, samples = _by_depth(result, key)
    drawn = _band(ax, depths, samples, c, "median")
    extra = []
    if key == "mean_sq_singular_value" and result.get("has_theory"):
      theory = np.asarray([np.nan if d["theory_mean_sq_singular_value"] is None
                           else d["theory_mean_sq_singular_value"] for d in result["depths"]],
                          float)
      ax.plot(depths, theory, "k--", lw=1.2,
              label="theory: the mean (the factory's gradflow_theory)")
      extra = [theory]
    _fit_log_limits(ax, [drawn], fallback=extra)
    if key == "spectral_norm":
      n_unconv = sum(d["summary"]["unconverged"] for d in result["depths"])
      if n_unconv:
        ax.text(0.01, 0.07, f"{n_unconv} Lanczos values not converged: left out",
                transform=ax.transAxes, fontsize=8, color="firebrick")
    n_missing = int((~(np.isfinite(samples) & (samples > 0))).sum())
    if n_missing and key != "spectral_norm":
      ax.text(0.01, 0.01, f"{n_missing} values not drawn: 0 or not finite",
              transform=ax.transAxes, fontsize=8, color="firebrick")
    ax.fill_between([], [], [], color=c, alpha=0.2, lw=0, label="10-90% of seeds x examples")
    ax.set_xscale("log", base=2)
    ax.set_xlim(depths.min() / 1.2, depths.max() * 1.2)  # set: an all-NaN panel has no data limits
    if np.isfinite(drawn).any() or any(np.isfinite(e).any() for e in extra):
      ax.set_yscale("log")
    else:
      ax.text(0.5, 0.5, "no finite positive values", ha="center", transform=ax.transAxes,
              color="firebrick")
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("depth")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
  seeds, examples = result["settings"]["seeds"], result["settings"]["examples"]
  fig.suptitle(f"Depth study of {label} ({seeds} seed{'s' * (seeds > 1)} x {examples} "
               f"example{'s' * (examples > 1)} per depth)")
  return _io.save_figure(fig, path)


def plot_depth_layer_heatmap(result: dict, label: str, path):
  """Depth x tap heatmap of the mean squared singular value of d tap / d
  source (median over seeds; Hutchinson): where along the network the
  signal grows or shrinks, for every depth studied."""
  records = result["depths"]
  width = max(len(d["taps"]) for d in records)
  grid = np.full((len(records), width), np.nan)
  for i, d in enumerate(records):
    v = np.nanmedian(np.asarray(d["tap_mean_sq_singular_value"], float), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
      grid[i, :len(v)] = np.where(v > 0, np.log10(v), np.nan)
  fig, ax = _subplots(figsize=(12, 1.2 + 0.55 * len(records)))
  finite = grid[np.isfinite(grid)]
  if finite.size:
    lim = max(abs(finite.min()), abs(finite.max()), 0.5)
    im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim,
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label="log10 mean s^2 (0: neither grows nor shrinks)")
  else:
    ax.text(0.5, 0.5, "no finite values (Jacobians not measured)", ha="center",
            transform=ax.transAxes)
  ax.set_yticks(range(len(records)), [str(d["depth"]) for d in records])
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_ylabel("depth")
  ax.set_xlabel("tap, in recording order (input side on the left; blank: the network is "
                "shallower)")
  ax.set_title(f"{label}: mean squared singular value of d tap / d {records[0]['source']}, "
               "median over seeds", fontsize=10)
  return _io.save_figure(fig, path)


def plot_coordinate_check(result: dict, label: str, path, max_taps: int = 10):
  """The muP coordinate check: per tap, rms of its coordinates at init and
  rms of their change after each step, against width (log-log)."""
  records = result["widths"]
  widths = np.asarray([r["width"] for r in records])
  names = result["taps"]
  pick = list(range(len(names)))
  if len(pick) > max_taps:  # evenly spaced, always the first and last
    pick = sorted(set(np.linspace(0, len(names) - 1, max_taps).round().astype(int).tolist()))
  steps = records[0]["rms_change"].shape[1]
  fig, axes = _subplots(1, steps + 1, figsize=(4.2 * (steps + 1), 4.6), sharey=False)
  colours = matplotlib.colormaps.get_cmap("viridis")(np.linspace(0, 0.9, len(pick)))
  for k, ax in enumerate(axes):
    for c, i in zip(colours, pick):
      if k == 0:
        v = np.asarray([r["rms_init"][:, i].mean() for r in records])
      else:
        v = np.asarray([r["rms_change"][:, k - 1, i].mean() for r in records])
      ok = np.isfinite(v) & (v > 0)
      ax.plot(widths[ok], v[ok], "o-", color=c, ms=3, label=names[i] if k == 0 else None)
    ax.set_xscale("log", base=2)
    ax.set_xlim(widths.min() / 1.2, widths.max() * 1.2)
    ax.set_yscale("log")
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("width")
    ax.set_title("rms(tap) at init" if k == 0 else f"rms(tap_t - tap_0), t = {k}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
  s = result["settings"]
  fig.legend(loc="lower center", ncol=min(5, len(pick)), fontsize=8, frameon=False,
             bbox_to_anchor=(0.5, -0.08 - 0.04 * (len(pick) // 5)))
  fig.suptitle(f"Coordinate check of {label} ({s['optimizer']}, lr {s['lr']}, mean of "
               f"{s['seeds']} seeds)\nflat lines: width-stable; lines rising with width: "
               "blow up as the model widens")
  fig.tight_layout(rect=(0, 0, 1, 0.95))
  return _io.save_figure(fig, path)
