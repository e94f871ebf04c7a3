"""Shared helpers of the PNG renderers: figures without pyplot, readable log
ticks (:class:`_LogTicks`, :func:`_set_log`, :func:`_tick_label`), a log axis
or a note where one cannot be drawn, integer and step ticks, hatching of
cells without a value, titles with their settings, median-and-band lines."""

from __future__ import annotations

import math
import re
import textwrap
import warnings

import matplotlib
import matplotlib.figure
import matplotlib.patches
import matplotlib.ticker
import numpy as np

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


def _positive(v):
  v = np.asarray(v, float)
  return np.where(np.isfinite(v) & (v > 0), v, np.nan)


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
