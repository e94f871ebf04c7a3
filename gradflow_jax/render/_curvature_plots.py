"""``hessian_spectrum.png`` and the terminal tables of ``analyze.py
curvature``, from :func:`gradflow_jax.studies._curvature.curvature_study`'s
result dict (or the results.json it was written to)."""

from __future__ import annotations

import math

import matplotlib.lines
import matplotlib.patches
import matplotlib.transforms
import numpy as np
from rich import box
from rich.table import Table

from gradflow_jax import _io
from gradflow_jax.render._axes import _set_log, _subplots, _suptitle
from gradflow_jax.render._render import fmt

BLOCKS_SHOWN = 30  # the sharpest leaves drawn (the rest are in results.json)
FLOOR_DECADES = 10  # the density axis spans this many decades below its peak
UNCONVERGED = "not converged (a lower bound)"


def _floats(values) -> np.ndarray:
  return np.array([np.nan if v is None else v for v in np.ravel(values)], float)


def _num(v) -> float:
  """A number of the result (None in results.json where it was NaN)."""
  return np.nan if v is None else float(v)


def _g(v: float) -> str:
  return f"{v:.3g}" if math.isfinite(v) else "NaN"


def _top(result: dict):
  """(values, converged) of the top eigenvalues, NaN where there is none."""
  return _floats(result["top_eigenvalues"]), np.asarray(result["converged"], bool)


def _blocks(result: dict):
  """(names, sharpness, converged) of every leaf, the sharpest first (NaN last)."""
  names = list(result["blocks"])
  value = _floats([result["blocks"][n]["sharpness"] for n in names])
  ok = np.array([bool(result["blocks"][n]["converged"]) for n in names], bool)
  order = np.argsort(np.where(np.isfinite(value), -value, np.inf), kind="stable")
  return [names[i] for i in order], value[order], ok[order]


def plot_hessian_spectrum(result: dict, path=None):
  """Left: the SLQ eigenvalue density (log y) with the top eigenvalues marked
  (solid: converged; dotted grey: not converged, a lower bound) and 2 / lr
  where an lr was given. Right: the top eigenvalue of each parameter leaf's
  diagonal block (the sharpest ``BLOCKS_SHOWN``)."""
  names, _, _ = _blocks(result)
  shown = min(len(names), BLOCKS_SHOWN)
  fig, (ax, bx) = _subplots(1, 2, figsize=(14, max(5.0, 1.6 + 0.27 * shown)),
                            layout="constrained", gridspec_kw={"width_ratios": [3, 2]})
  _density_panel(ax, result)
  _blocks_panel(bx, result)
  s = result["settings"]
  trace, stderr = _num(result["trace"]), _num(result["trace_stderr"])
  mean = trace / result["parameters"]
  model = result.get("model")
  _suptitle(fig, "Hessian of the loss" + (f": {model}" if model else ""),
            f"{s['examples']} examples, {result['parameters']:,} parameters, loss "
            f"{_g(_num(result['loss']))}; trace {_g(trace)} \u00b1 {_g(stderr)} "
            f"(Hutchinson, {s['probes']} probes; mean eigenvalue {_g(mean)}); seed {s['seed']}")
  return _io.save_figure(fig, path)


def _density_panel(ax, result: dict) -> None:
  d, s = result["density"], result["settings"]
  grid, values = _floats(d["grid"]), _floats(d["values"])
  sigma = _num(d["sigma"])
  ax.set_title(f"Eigenvalue density (SLQ: {s['probes']} probes \u00d7 {s['lanczos_steps']} "
               f"Lanczos steps, Gaussian \u03c3 = {_g(sigma)})", fontsize=10)
  ax.set_xlabel("eigenvalue of the Hessian")
  ok = np.isfinite(values) & (values > 0)
  if not ok.any():
    ax.text(0.5, 0.5, "the density is non-finite (NaN/Inf in the Hessian-vector products)",
            transform=ax.transAxes, ha="center", va="center", color="firebrick")
    return
  peak = values[ok].max()
  floor = max(values[ok].min(), peak * 10.0**-FLOOR_DECADES)
  ax.fill_between(grid, floor, np.clip(np.where(np.isfinite(values), values, floor), floor,
                                       None), color="C0", alpha=0.25, lw=0)
  ax.plot(grid, np.clip(values, floor, None), color="C0", lw=1.2, label="density")
  _set_log(ax, "y")
  ax.set_ylim(floor, peak * 3)
  ax.set_ylabel("density (fraction of eigenvalues per unit; log)")
  left, right = float(np.nanmin(grid)), float(np.nanmax(grid))
  handles = [matplotlib.lines.Line2D([], [], color="C0", lw=1.2, label="density")]
  top, converged = _top(result)
  for i, (v, c) in enumerate(zip(top, converged)):
    if not math.isfinite(v):
      continue
    style = dict(color=f"C{1 + i % 9}", ls="-", lw=1.3) if c else dict(color="0.45", ls=":",
                                                                        lw=1.3)
    ax.axvline(v, **style)
    label = f"\u03bb{i + 1} = {_g(v)}" if c else f"\u03bb{i + 1} \u2265 {_g(v)} (not converged)"
    handles.append(matplotlib.lines.Line2D([], [], **style, label=label))
  missing = [f"\u03bb{i + 1}" for i, v in enumerate(top) if not math.isfinite(v)]
  notes = [f"{', '.join(missing)}: no value (the Krylov space held fewer directions)"] \
      if missing else []
  t = result.get("thresholds")
  if t:
    gd = float(t["gd"])
    if gd <= right + 2 * (right - left):  # close enough to draw without hiding the spectrum
      ax.axvline(gd, color="firebrick", ls="--", lw=1.3)
      handles.append(matplotlib.lines.Line2D([], [], color="firebrick", ls="--",
                                             label=f"GD 2/lr = {_g(gd)} (lr {_g(t['lr'])})"))
      right = max(right, gd * 1.05 if gd > 0 else right)
    else:
      times = f", {gd / top[0]:.3g}\u00d7 \u03bb1" if top[0] > 0 else ""  # False for NaN
      notes.append(f"GD 2/lr = {_g(gd)} (lr {_g(t['lr'])}) lies beyond the axis{times}")
    notes.append(f"Adam 38/lr (b1={t['adam_b1']:g}) = {_g(float(t['adam']))} bounds Adam's "
                 "preconditioned sharpness (P\u207b\u00b9H), not these eigenvalues: not drawn")
  ax.set_xlim(left, right)
  ax.axvline(0, color="0.7", lw=0.8, zorder=0)
  below = matplotlib.transforms.offset_copy(ax.transAxes, fig=ax.figure, y=-34, units="points")
  ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0),
            bbox_transform=below, ncol=min(len(handles), 3))  # under the x label
  if notes:
    ax.text(0.01, 0.015, "\n".join(notes), transform=ax.transAxes, fontsize=8, va="bottom",
            ha="left", color="0.2", bbox=dict(facecolor="white", alpha=0.85, edgecolor="0.8"))
  ax.grid(alpha=0.3)


def _blocks_panel(ax, result: dict) -> None:
  names, value, ok = _blocks(result)
  total = len(names)
  names, value, ok = names[:BLOCKS_SHOWN], value[:BLOCKS_SHOWN], ok[:BLOCKS_SHOWN]
  rows = np.arange(len(names))
  finite = np.isfinite(value)
  log = bool(finite.any() and (value[finite] > 0).all())
  colours = ["C0" if c else "0.75" for c in ok]
  drawn = np.where(finite, value, np.nan)
  ax.barh(rows, drawn, color=colours, hatch=["" if c else "///" for c in ok],
          edgecolor=["C0" if c else "0.45" for c in ok], lw=0.6)
  for r in rows[~finite]:
    ax.text(0.02, r, "NaN", transform=ax.get_yaxis_transform(), va="center", color="firebrick",
            fontsize=8)
  ax.set_yticks(rows, names, fontsize=8)
  ax.invert_yaxis()
  handles = [matplotlib.patches.Patch(color="C0", label="converged")] if ok.any() else []
  if not ok.all():
    handles.append(matplotlib.patches.Patch(facecolor="0.75", edgecolor="0.45", hatch="///",
                                            label=UNCONVERGED))
  top, converged = _top(result)
  whole = bool(converged[0] and math.isfinite(top[0]) and (top[0] > 0 or not log))
  if whole:  # every block's top eigenvalue is at most the whole Hessian's
    ax.axvline(top[0], color="C1", lw=1.3)
    handles.append(matplotlib.lines.Line2D([], [], color="C1",
                                           label=f"\u03bb1 of the whole Hessian = {_g(top[0])}"))
  if log:
    _set_log(ax, "x")
    lo, hi = value[finite].min(), max(value[finite].max(), top[0] if whole else 0)
    ax.set_xlim(lo / 3, hi * 3)
  else:
    ax.axvline(0, color="0.5", lw=0.8)
  ax.legend(handles=handles, fontsize=8, loc="lower right")
  more = f" (the sharpest {len(names)} of {total})" if total > len(names) else ""
  ax.set_title(f"Top eigenvalue of each leaf's diagonal block{more}", fontsize=10)
  ax.set_xlabel("block sharpness" + (" (log)" if log else ""))
  ax.grid(alpha=0.3, axis="x")


def curvature_tables(result: dict, blocks: int = 8) -> list:
  """What ``rich`` prints: the top eigenvalues ('~' marks one that did not
  converge: a lower bound), a line with the trace (and the thresholds), and
  the sharpest ``blocks`` leaves."""
  top, converged = _top(result)
  errors = _floats(result["top_error"])
  t = Table(title="Hessian: top eigenvalues", title_justify="left", title_style="bold",
            header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
  for col in ("rank", "eigenvalue", "error bound"):
    t.add_column(col, justify="right", no_wrap=True)
  for i, (v, e, c) in enumerate(zip(top, errors, converged)):
    t.add_row(str(i + 1), ("" if c else "~") + fmt(v), fmt(e))
  s = result["settings"]
  note = (f"trace {fmt(_num(result['trace']))} \u00b1 {fmt(_num(result['trace_stderr']))} "
          f"(Hutchinson, {s['probes']} probes) over {result['parameters']:,} parameters, "
          f"loss on {s['examples']} examples; '~': not converged, a lower bound")
  thresholds = result.get("thresholds")
  if thresholds:
    note += (f"\nGD 2/lr = {fmt(thresholds['gd'])}; Adam 38/lr = {fmt(thresholds['adam'])} "
             "(b1 = 0.9) bounds the preconditioned Hessian's top eigenvalue, not these")
  names, value, ok = _blocks(result)
  b = Table(title=f"Sharpest parameter leaves ({min(blocks, len(names))} of {len(names)})",
            title_justify="left", title_style="bold", header_style="bold",
            box=box.SIMPLE_HEAD, pad_edge=False)
  b.add_column("leaf", no_wrap=True)
  b.add_column("size", justify="right")
  b.add_column("block sharpness", justify="right")
  for name, v, c in list(zip(names, value, ok))[:blocks]:
    b.add_row(name, f"{result['blocks'][name]['size']:,}", ("" if c else "~") + fmt(v))
  return [t, note, b]
