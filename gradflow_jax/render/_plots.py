"""PNG renderers. They draw numbers already measured; they compute nothing."""

from __future__ import annotations

import math
import re
import textwrap
import warnings

import matplotlib
import matplotlib.figure
import matplotlib.lines
import matplotlib.patches
import matplotlib.ticker
import jax.numpy as jnp
import numpy as np

from gradflow_jax import _io
from gradflow_jax.models import _activations

_MARKERS = "osD^vP*Xph<>"
NO_VALUE_LABEL = "no value: 0, NaN/Inf or not measured"


def _subplots(*grid, figsize=None, layout=None, **kw):
  """``plt.subplots`` without pyplot: a Figure of its own, never registered
  with pyplot (nothing shown or kept open behind the user's back; a notebook
  displays the returned figure once)."""
  fig = matplotlib.figure.Figure(figsize=figsize, layout=layout)
  return fig, fig.subplots(*grid, **kw)


def _tick_label(v: float) -> str:
  """A tick of a log axis as a reader writes it: 0.5, 20, 2.25, 10^-5, 2x10^-5."""
  if not (math.isfinite(v) and v > 0):
    return ""
  exp = math.floor(math.log10(v) + 1e-9)
  mant = round(v / 10 ** exp, 2)
  if mant >= 10:
    mant, exp = mant / 10, exp + 1
  if -2 <= exp <= 3:
    return np.format_float_positional(float(f"{v:.3g}"), trim="-")
  if abs(mant - 1) < 1e-9:
    return f"$10^{{{exp}}}$"
  return f"${mant:g}\\times10^{{{exp}}}$"


class _LogTicks(matplotlib.ticker.Locator):
  """Ticks of a log axis that can be read whatever it spans: whole decades
  over more than 2.5 decades, 1-2-5 steps over less, evenly spaced values
  (2.2, 2.4, 2.6) inside less than a decade, where a decade locator
  would leave only unlabelled minor ticks (or label them 2x10^0). The minor
  instance gives unlabelled in-between ticks over wide spans only."""

  def __init__(self, minor: bool = False, integer: bool = False):
    self.minor = minor
    self.integer = integer

  def __call__(self):
    lo, hi = self.axis.get_view_interval()
    return self.tick_values(lo, hi)

  def tick_values(self, vmin, vmax):
    ticks = self._values(vmin, vmax)
    if not self.integer:
      return ticks
    whole = [t for t in ticks if t >= 1 and abs(t - round(t)) < 1e-9]
    if len(whole) >= 2 or self.minor:
      return whole
    lo, hi = sorted((float(vmin), float(vmax)))  # a short integer axis: every integer
    return [float(k) for k in range(max(1, math.ceil(lo)), math.floor(hi) + 1)][:12]

  def _values(self, vmin, vmax):
    lo, hi = sorted((float(vmin), float(vmax)))
    if not (lo > 0 and math.isfinite(hi) and hi > lo):
      return []
    decades = math.log10(hi / lo)
    if decades > 2.5:  # every 1, 2, 3, 5, 10, 20, ... decades: at most 8 ticks
      k0, k1 = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
      stride = next(m * 10 ** e for e in range(0, 4) for m in (1, 2, 3, 5)
                    if (k1 - k0) // (m * 10 ** e) < 8)
      major = [k for k in range(k0, k1 + 1) if k % stride == 0]
      if not self.minor:
        return [10.0 ** k for k in major]
      if stride == 1:  # 2..9 within each decade, unlabelled
        return [m * 10.0 ** k for k in range(k0 - 1, k1 + 1) for m in range(2, 10)
                if lo <= m * 10.0 ** k <= hi]
      return [10.0 ** k for k in range(k0, k1 + 1) if k % stride]
    if self.minor:
      return []
    if decades > 1.0:
      k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
      return [m * 10.0 ** k for k in range(k0, k1 + 1) for m in (1, 2, 5)
              if lo * (1 - 1e-9) <= m * 10.0 ** k <= hi * (1 + 1e-9)]
    for bins in (8, 10, 12):  # at least 3 ticks in view
      ticks = matplotlib.ticker.MaxNLocator(nbins=bins, steps=[1, 2, 2.5, 5, 10]).tick_values(
          lo, hi)
      ticks = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9) and t > 0]
      if len(ticks) >= 3:
        break
    return ticks


def _set_log(ax, axis: str = "y", integer: bool = False) -> None:
  """A log scale on ``axis`` with readable ticks (:class:`_LogTicks`);
  ``integer``: whole numbers only (a depth axis)."""
  (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
  _readable_log_ticks(ax.yaxis if axis == "y" else ax.xaxis, integer)


def _readable_log_ticks(a, integer: bool = False) -> None:
  """:class:`_LogTicks` on a log-scaled matplotlib Axis (a colour bar's too)."""
  a.set_major_locator(_LogTicks(integer=integer))
  a.set_minor_locator(_LogTicks(minor=True, integer=integer))
  a.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _tick_label(v)))
  a.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _log_or_note(ax, arrays, axis: str = "y", what: str = "values",
                 note_nonfinite: bool = True) -> bool:
  """A readable log scale on ``axis`` when ``arrays`` hold a finite positive
  value; otherwise a linear axis and a note on the plot saying why (all 0,
  e.g. underflow; all negative; all non-finite): a log axis cannot hold them,
  and matplotlib would raise rather than draw. Returns whether it is log.
  ``note_nonfinite=False``: no note where every value is non-finite (the
  caller writes one per panel)."""
  v = np.concatenate([np.ravel(np.asarray(a, float)) for a in arrays] or [np.zeros(0)])
  finite = v[np.isfinite(v)]
  if (finite > 0).any():
    _set_log(ax, axis)
    return True
  if not finite.size:
    if not note_nonfinite:  # the caller writes its own note per panel
      return False
    msg = f"all {what} non-finite: nothing to draw"
  elif np.all(finite == 0):
    msg = f"all {what} are exactly 0 (underflow or no signal):\ndrawn at 0 on a linear axis"
  else:
    msg = f"all {what} are 0 or negative: drawn on a linear axis"
  ax.text(0.5, 0.75, msg, transform=ax.transAxes, ha="center", va="center", color="firebrick",
          fontsize=9)
  return False


def _integer_ticks(ax, axis: str = "x") -> None:
  """Integer ticks only (layer, step and tap indices: no 2.5)."""
  a = ax.xaxis if axis == "x" else ax.yaxis
  a.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def _step_ticks(ax, steps) -> None:
  """Ticks at the logged steps where there are few, else integer ticks."""
  steps = list(steps)
  if 0 < len(steps) <= 12:
    ax.set_xticks(steps, [str(int(s)) for s in steps])
  else:
    _integer_ticks(ax)


def _no_value_background(ax, colour: str = "#e4e4e4") -> matplotlib.patches.Patch:
  """Hatched grey behind an image whose NaN cells are transparent, so a
  cell without a value reads as such, never as a colour of the scale.
  Returns the legend handle for it."""
  ax.add_patch(matplotlib.patches.Rectangle((0, 0), 1, 1, transform=ax.transAxes,
                                            facecolor=colour, edgecolor="#8a8a8a", hatch="///",
                                            lw=0, zorder=-1))
  return matplotlib.patches.Patch(facecolor=colour, edgecolor="#8a8a8a", hatch="///",
                                  label=NO_VALUE_LABEL)


def _cmap(name: str):
  """A colour map whose NaN ("bad") cells are transparent (see
  :func:`_no_value_background`)."""
  return matplotlib.colormaps[name].with_extremes(bad=(0, 0, 0, 0))


def _fmt_setting(v) -> str:
  if isinstance(v, float):
    return f"{v:g}"
  return str(v)


def _mlp_settings(s: dict | None) -> str:
  """One line of what an MLP run was: depth, width, norm, residual, batch,
  loss, sigma_b, seed (whatever ``s`` holds)."""
  if not s:
    return ""
  parts = []
  if s.get("depth") is not None:
    parts.append(f"{s['depth']} hidden layers")
  if s.get("width") is not None:
    parts.append(f"width {s['width']}")
  if "residual" in s:
    parts.append("residual blocks" if s["residual"] else "no residual")
  if "norm" in s:
    parts.append(f"norm {s['norm'] or 'none'}")
  if s.get("in_dim") is not None:
    parts.append(f"{s['in_dim']} inputs")
  if s.get("out_dim") is not None:
    parts.append(f"{s['out_dim']} outputs")
  if s.get("batch") is not None:
    parts.append(f"batch {s['batch']}")
  if s.get("loss"):
    parts.append(f"{s['loss']} loss")
  if s.get("sigma_b") is not None:
    parts.append(f"sigma_b {_fmt_setting(s['sigma_b'])}")
  if s.get("seed") is not None:
    parts.append(f"seed {s['seed']}")
  return ", ".join(parts)


def _suptitle(fig, title: str, settings_line: str = "", fontsize: float = 11, **kw) -> None:
  """``title`` and, below it, the settings wrapped to the figure's width (a
  long line would widen the saved figure instead)."""
  text = title
  if settings_line:
    chars = max(40, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))
    text += "\n" + textwrap.fill(settings_line, chars)
  fig.suptitle(text, fontsize=fontsize, **kw)


def _natural_key(text: str):
  """Sort key that puts layers/10 after layers/9."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


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


def _small_multiples(runs, rows: list[tuple[str, str, str]], title: str, draw,
                     settings_line: str = ""):
  """A grid: a row per panel (``(key, ylabel, xlabel)``), a column per
  activation, y shared along each row; x shared down a column only where
  every row indexes the same layers (the same ``xlabel``), integer ticks.
  ``draw(ax, key, run)`` draws one run's line; the recommended init is solid,
  the shared init dashed (named in the legend); ``settings_line`` under the
  title. Returns the figure and its (rows, columns) axes."""
  groups = _by_activation(runs)
  cols = len(groups)
  same_x = len({r[2] for r in rows}) == 1
  fig, axes = _subplots(len(rows), cols, figsize=(max(6.0, 2.7 * cols + 1.0),
                                                       2.6 * len(rows) + 1.2),
                           squeeze=False, sharey="row", sharex="col" if same_x else False)
  for c, (act, members) in enumerate(groups):
    rec = [str(r.get("init")) for r in members if r["role"] == "recommended"]
    axes[0, c].set_title(f"{act} ({rec[0]})" if rec and rec[0] != "None" else act)
    for (key, label, xlabel), ax in zip(rows, axes[:, c]):
      for r in members:
        draw(ax, key, r)
      ax.grid(alpha=0.3, which="both")
      _integer_ticks(ax)
      if not same_x:
        ax.set_xlabel(xlabel, fontsize=8.5)
  for (key, label, xlabel), row in zip(rows, axes):
    row[0].set_ylabel(label)
  if same_x:
    for ax in axes[-1]:
      ax.set_xlabel(rows[0][2])
  _suptitle(fig, title, settings_line)
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


def plot_activation_stats(runs: list[dict], path, settings: dict | None = None):
  """std, saturation and dead fractions against layer index: a column per
  activation, a row per statistic; the diagnosis thresholds drawn on the
  fraction rows. ``settings``: the comparison's (depth, width, norm, ...),
  named in the title."""
  from gradflow_jax.diagnosis import _diagnose
  thresholds = {"saturation_fraction": _diagnose.SATURATION_WARN_FRACTION,
                "dead_fraction": _diagnose.DEAD_WARN_FRACTION}
  rows = [("std", "activation std\n(ddof=1)", "hidden layer"),
          ("saturation_fraction", "saturated\nfraction", "hidden layer"),
          ("dead_fraction", "dead-unit\nfraction", "hidden layer")]

  def draw(ax, key, r):
    v = np.asarray(r["activation_stats"][key], float)
    ax.plot(np.arange(len(v)), _positive(v) if key == "std" else v, **_init_line(r))
  fig, axes = _small_multiples(runs, rows, "Activation statistics per hidden layer", draw,
                               _mlp_settings(settings))
  for (key, _, _), row in zip(rows, axes):
    if key == "std":
      _log_or_note(row[0], [r["activation_stats"]["std"] for r in runs], what="std values",
                   note_nonfinite=False)
    else:
      row[0].set_ylim(-0.03, 1.03)
    for ax, (act, members) in zip(row, _by_activation(runs)):
      if key in thresholds:
        t = thresholds[key]
        ax.axhline(t, color="firebrick", ls=":", lw=1)
        ax.text(0.98, t, f"warn > {t:g}", transform=ax.get_yaxis_transform(), ha="right",
                va="bottom", fontsize=7, color="firebrick")
      _no_finite_note(ax, [r["activation_stats"][key] for r in members])
  return _io.save_figure(fig, path)


def _positive(v):
  v = np.asarray(v, float)
  return np.where(np.isfinite(v) & (v > 0), v, np.nan)


def plot_grad_norms(runs: list[dict], path, settings: dict | None = None):
  """||dL/dz_l|| per hidden layer and ||dL/dW|| per dense layer, log scale: a
  column per activation. The two rows index different layers (a residual
  block holds two dense layers; the output layer is a dense layer, not a
  hidden one): each has its own x axis. ``settings``: the comparison's,
  named in the title."""
  residual = bool((settings or {}).get("residual"))
  rows = [("preact_grad_norm", "||dL/dz||\nper hidden layer", "hidden layer"),
          ("weight_grad_norm", "||dL/dW|| per dense layer\n(2 per residual block)" if residual
           else "||dL/dW||\nper dense layer", "dense layer (0: input, last: output)")]

  def draw(ax, key, r):
    v = _positive(r["gradient_stats"][key])
    ax.plot(np.arange(len(v)), v, **_init_line(r))
  fig, axes = _small_multiples(
      runs, rows, "Gradient norms at initialization: falling toward layer 0 = vanishing, "
      "rising = exploding", draw, _mlp_settings(settings))
  for (key, _, _), row in zip(rows, axes):
    _log_or_note(row[0], [r["gradient_stats"][key] for r in runs], what="gradient norms",
                 note_nonfinite=False)
    for ax, (act, members) in zip(row, _by_activation(runs)):
      _no_finite_note(ax, [_positive(r["gradient_stats"][key]) for r in members])
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


def _sweep_settings(s: dict | None) -> str:
  if not s:
    return ""
  parts = [f"width {s['width']}" if s.get("width") is not None else "",
           f"{s['seeds']} seed{'s' * (s['seeds'] != 1)} x {s['batch']} inputs"
           if s.get("seeds") and s.get("batch")
           else "", f"dtype {s['dtype']}" if s.get("dtype") else "",
           f"seed {s['seed']}" if s.get("seed") is not None else ""]
  return ", ".join(p for p in parts if p)


def plot_depth_sweep(points: list[dict], path, settings: dict | None = None):
  """Spectral norm and mean squared singular value of dh_l/dx against depth l:
  median over seeds and examples, 10-90% band, mean-field theory dashed.
  ``settings``: the sweep's (width, seeds, ...), named in the title."""
  fig, axes = _subplots(1, 2, figsize=(14, 5.6), layout="constrained")
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
    _log_or_note(ax, list(arrays) + list(extra), what="values")
    n = sum(int(np.isnan(a).sum()) for a in arrays)
    if n:
      ax.text(0.01, 0.01, f"{n} values not drawn: underflowed to 0 or not finite",
              transform=ax.transAxes, fontsize=8, color="firebrick", va="bottom")
  for ax, title in zip(axes, ["spectral norm of dh_l/dx", "mean squared singular value of dh_l/dx"]):
    _set_log(ax, "x", integer=True)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("depth l")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
  handles, labels = axes[1].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize=8,
             frameon=False)
  _suptitle(fig, "Input-output Jacobians across depth: flat at 1 = dynamical isometry; "
            "growing = exploding, falling = vanishing", _sweep_settings(settings), 12)
  return _io.save_figure(fig, path)


def plot_layer_jacobians(curves: list[dict], path, settings: dict | None = None):
  """||dh_l/dh_(l-1)|| per layer (median over examples, 10-90% band): a
  panel per curve (one y axis shared), its mean-field reference dashed."""
  n = len(curves)
  fig, axes = _subplots(n, 1, figsize=(9, 1.4 + (2.5 if n <= 3 else 1.9) * n), squeeze=False,
                        sharex=True, sharey=True)
  axes = axes[:, 0]
  cmap = matplotlib.colormaps.get_cmap("tab10")
  values = []
  for i, (ax, c) in enumerate(zip(axes, curves)):
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
    _band(ax, layers, norms, cmap(i % 10), "median over examples")
    ax.fill_between([], [], [], color=cmap(i % 10), alpha=0.2, lw=0, label="10-90% of examples")
    values.append(norms)
    chi1 = c.get("chi1")
    if chi1 is not None and np.isfinite(chi1) and chi1 > 0:
      ax.axhline(np.sqrt(chi1), color=cmap(i % 10), ls="--", lw=0.9,
                 label=f"mean-field RMS singular value sqrt(chi_1) = {np.sqrt(chi1):.3g}")
      values.append([np.sqrt(chi1)])
    ax.set_title(label, fontsize=9, loc="left")
    ax.set_ylabel("||dh_l / dh_(l-1)||_2", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best", ncol=3)
  _log_or_note(axes[0], values, what="norms")
  _integer_ticks(axes[-1])
  axes[-1].set_xlabel("layer l")
  _suptitle(fig, "Per-layer Jacobian spectral norms (Lanczos). The norm of a random layer "
            "sits above its RMS singular value\n(He-ReLU: ~2.3 vs 1): compare each curve with "
            "its dashed line", _sweep_settings(settings), 10)
  fig.tight_layout()
  return _io.save_figure(fig, path)


def _rnn_settings(s: dict | None) -> str:
  if not s:
    return ""
  parts = [f"hidden {s['hidden']}" if s.get("hidden") is not None else "",
           f"T = {s['steps']} steps" if s.get("steps") is not None else "",
           f"{s['init']} init" if s.get("init") else "",
           f"input dim {s['in_dim']}" if s.get("in_dim") is not None else "",
           f"{s['batch']} sequences" if s.get("batch") is not None else "",
           f"seed {s['seed']}" if s.get("seed") is not None else ""]
  return ", ".join(p for p in parts if p)


def plot_rnn_through_time(runs: list[dict], path, settings: dict | None = None):
  """Left: ||dh_T/dh_t|| against T - t per scale of W, Pascanu bound dashed.
  Right: the norm over the whole sequence against the scale of W. Values of
  exactly 0 (the signal underflowed) are marked at the foot of a log axis, or
  drawn at 0 on a linear one where nothing is positive. ``settings``: the
  command's (hidden, steps, init, ...), named in the title."""
  fig, axes = _subplots(1, 2, figsize=(14, 5))
  cmap = matplotlib.colormaps.get_cmap("viridis")
  left = []
  for i, r in enumerate(runs):
    c = cmap(i / max(len(runs) - 1, 1))
    norms = np.asarray(r["jacobian_norm"], float)[..., ::-1]  # index = T - t - 0
    lag = np.arange(norms.shape[-1])
    label = f"{r['scale_kind']} {r['scale']:.3g}"
    flat = norms.reshape(-1, len(lag))
    zero = np.all(flat == 0, axis=0)
    if zero.any():
      label += f" (0 from T-t = {int(lag[zero][0])} on)"
    left += [norms]
    _band(axes[0], lag, norms, c, label)
    bound = np.asarray(r["pascanu_bound"], float)[::-1]
    axes[0].plot(lag, np.where(bound > 0, bound, np.nan), "--", color=c, lw=0.9)
    left += [bound]
  axes[0].plot([], [], "k--", label="Pascanu bound (gamma ||W||)^(T-t)")
  _log_or_note(axes[0], left, what="norms")
  _integer_ticks(axes[0])
  axes[0].set_xlabel("T - t (steps back in time)")
  axes[0].set_title("||dh_T / dh_t||_2 (median over sequences)")
  axes[0].legend(fontsize=7, ncol=2)
  scales = np.asarray([r["scale"] for r in runs], float)
  series = []
  for key in ("jacobian_norm", "state_grad_norm"):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      series.append(np.asarray([np.nanmedian(np.asarray(r[key], float)[:, 0]) for r in runs]))
  log = _log_or_note(axes[1], series, what="whole-sequence norms")
  zeros = 0
  for vals, (label, marker) in zip(series, (("||dh_T/dh_0||", "o"), ("||dL/dh_0||", "s"))):
    lines = axes[1].plot(scales, np.where(vals > 0, vals, np.nan) if log else vals,
                         marker=marker, label=label)
    if log and (vals == 0).any():  # at the foot of the axis, in the line's colour
      zeros += int((vals == 0).sum())
      axes[1].plot(scales[vals == 0], np.full(int((vals == 0).sum()), 0.03), marker=marker,
                   ls="none", mfc="none", color=lines[0].get_color(),
                   transform=axes[1].get_xaxis_transform(), clip_on=False)
  if zeros:
    axes[1].plot([], [], "o", mfc="none", color="grey",
                 label=f"exactly 0 ({zeros} values; below any log axis)")
  axes[1].axvline(1.0 / runs[0]["gamma"], color="grey", ls=":", lw=1,
                  label="||W|| = 1/gamma (bound = 1)")
  axes[1].set_xlabel(f"{runs[0]['scale_kind']} of W")
  axes[1].set_title("Over the whole sequence. Below 1/gamma it must vanish; above, it may\n"
                    "explode or still vanish (the bound is necessary, not sufficient)", fontsize=10)
  axes[1].legend(fontsize=8)
  for ax in axes:
    ax.grid(alpha=0.3, which="both")
  _suptitle(fig, f"Vanilla {runs[0]['activation']} RNN: gradients through time",
            _rnn_settings(settings), 12, y=1.04 + 0.03 * bool(settings))
  return _io.save_figure(fig, path)


_TRAIN_FIELDS = (("activation", None), ("depth", "depth"), ("width", "width"),
                 ("residual", None), ("norm", "norm"), ("init", "init"),
                 ("optimizer", None), ("lr", "lr"), ("clip", "clip"))


def _train_setting(key, v) -> str:
  if key == "residual":
    return "residual" if v else "no residual"
  if key == "norm":
    return f"norm {v or 'none'}"
  if key == "clip":
    return "no clipping" if v is None else f"clip {_fmt_setting(v)}"
  if key == "activation":
    return str(v)
  name = dict(_TRAIN_FIELDS)[key]
  return f"{name} {_fmt_setting(v)}" if name else _fmt_setting(v)


def train_settings_title(runs: list[dict]) -> str:
  """What every run of a training comparison shares (activation, depth,
  width, residual, norm, init, optimizer, lr, clipping), then what differs
  between them: a suptitle that says what was run."""
  same, differ = [], []
  for key, _ in _TRAIN_FIELDS:
    vals = [r.get(key, "?") for r in runs if key in r]
    if not vals:
      continue
    if len({repr(v) for v in vals}) == 1:
      same.append(_train_setting(key, vals[0]))
    else:
      differ.append(key)
  text = ", ".join(same)
  if differ:
    text += f"; the runs differ in: {', '.join(differ)}"
  return text


def plot_training(runs: list[dict], path):
  """Loss, test accuracy, the first hidden layer's ||dL/dz|| and the global
  gradient norm over training, a line per run; the settings in the title."""
  fig, axes = _subplots(2, 2, figsize=(13, 8.4))
  for i, r in enumerate(runs):
    c = matplotlib.colormaps.get_cmap("tab10")(i % 10)
    logs = r["logs"]
    steps = np.arange(len(logs["loss"]))
    axes[0, 0].plot(steps, _positive(logs["loss"]), color=c, label=r["label"])
    axes[0, 1].plot(r["eval_steps"], r["eval_accuracy"], "o-", color=c, ms=3, label=r["label"])
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
                                           if stopped else ""), "loss"),
            ("test accuracy", None), ("||dL/dz|| at the first hidden layer", "preact_grad_norm"),
            ("global gradient norm before clipping (x: clipping fired)", "grad_norm")]
  for ax, (title, key) in zip(axes.flat, titles):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, which="both")
    if key:
      _integer_ticks(ax)
    else:
      _step_ticks(ax, sorted({int(s) for r in runs for s in r["eval_steps"]}))
    if key:
      _log_or_note(ax, [np.asarray(r["logs"][key], float)[:, 0] if key == "preact_grad_norm"
                        else r["logs"][key] for r in runs], what="values")
  axes[0, 1].set_ylim(0, 1)
  axes[0, 0].legend(fontsize=8)
  if axes[1, 1].get_legend_handles_labels()[0]:
    axes[1, 1].legend(fontsize=7)
  _suptitle(fig, "Training runs", train_settings_title(runs))
  fig.tight_layout()
  return _io.save_figure(fig, path)


def plot_grad_heatmap(runs: list[dict], path):
  """Layer x step heat maps of ||dL/dz_l|| / ||dL/dz_last||, the backward
  signal relative to the last hidden layer at the same step (log colour scale
  symmetric about 1), one per run: a loss that falls as the run converges
  scales every layer alike and leaves the map unchanged; only a signal that
  shrinks (or grows) toward the input shows. Cells without a value (0 or
  NaN/Inf) are hatched grey, named in the legend."""
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
  fig, axes = _subplots(len(runs), 1, figsize=(11, 2.4 * len(runs) + 1.4), squeeze=False,
                        layout="constrained")
  missing = False
  for ax, r, m in zip(axes[:, 0], runs, maps):
    handle = _no_value_background(ax)
    im = ax.imshow(m, aspect="auto", origin="lower", norm=norm, cmap=_cmap("RdBu_r"),
                   interpolation="nearest")
    if np.isnan(m).any():
      missing = True
      ax.text(1.0, 1.02, f"{int(np.isnan(m).sum())} cells without a value (hatched)",
              transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="firebrick")
    ax.set_ylabel("hidden layer")
    _integer_ticks(ax, "y")
    _integer_ticks(ax, "x")
    ax.set_title(r["label"], fontsize=10, loc="left")
  axes[-1, 0].set_xlabel("step")
  bar = fig.colorbar(im, ax=axes[:, 0].tolist(), label="||dL/dz_l|| / ||dL/dz_last||",
                     shrink=0.9)
  _readable_log_ticks(bar.ax.yaxis)
  if missing:
    fig.legend(handles=[handle], loc="outside lower center", fontsize=8, frameon=False)
  _suptitle(fig, "Backward signal per hidden layer over training, relative to the last "
            "hidden layer (blue: vanishing toward the input, red: growing)",
            train_settings_title(runs), 10)
  return _io.save_figure(fig, path)


def plot_fractions(runs: list[dict], path):
  """Dead-unit and saturated fractions over training, mean over layers (solid)
  and the worst layer (dashed), beside test accuracy (a run the guard
  stopped ends where it stopped)."""
  fig, axes = _subplots(1, 3, figsize=(17, 5.0))
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
    _integer_ticks(ax)
  _step_ticks(axes[2], sorted({int(s) for r in runs for s in r["eval_steps"]}))
  axes[2].legend(fontsize=8)
  _suptitle(fig, "Dead and saturated units over training", train_settings_title(runs))
  fig.tight_layout()
  return _io.save_figure(fig, path)
