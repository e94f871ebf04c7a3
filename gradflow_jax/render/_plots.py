"""PNG figures of the built-in MLP: the compare command's (activation
statistics, gradient norms, activation curves) and the train command's
(training curves, gradient heat map, dead and saturated fractions). They
draw numbers already measured; they compute nothing."""

from __future__ import annotations

import matplotlib
import matplotlib.lines
import jax.numpy as jnp
import numpy as np

from gradflow_jax import _io
from gradflow_jax.models import _activations
from gradflow_jax.render._axes import (_cmap, _integer_ticks, _log_or_note, _no_finite_note,
                                       _no_value_background, _positive, _readable_log_ticks,
                                       _step_ticks, _subplots, _suptitle)


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
