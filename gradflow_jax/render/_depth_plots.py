"""PNG figures of the built-in networks' Jacobian studies: the depth sweep,
the per-layer Jacobians and the RNN's gradients through time. They draw
numbers already measured; they compute nothing."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np

from gradflow_jax import _io
from gradflow_jax.render._axes import (_band, _fit_log_limits, _integer_ticks, _log_or_note,
                                       _set_log, _subplots, _suptitle)


def _sweep_settings(s: dict | None, first_seed_only: bool = False) -> str:
  """The sweep's settings for a title; the per-layer curves measure only the
  first seed's network (``first_seed_only``)."""
  if not s:
    return ""
  n = s.get("seeds")
  seeds = "the first seed" if first_seed_only else f"{n} seed{'s' * (n != 1)}"
  parts = [f"width {s['width']}" if s.get("width") is not None else "",
           f"{seeds} x {s['batch']} inputs"
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
            "its dashed line", _sweep_settings(settings, first_seed_only=True), 10)
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
