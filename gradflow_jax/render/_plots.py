"""PNG renderers. They draw numbers already measured; they compute nothing."""

from __future__ import annotations

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

