"""Figures of a user model's training run (train --model): loss and gradient
norm, the tap gradient heat map, update-to-weight ratios per parameter and
histograms of tap values and gradients over steps."""

from __future__ import annotations

import os
import warnings

import matplotlib
import matplotlib.colors
import numpy as np

from gradflow_jax import _io
from gradflow_jax.render._axes import (_cmap, _integer_ticks, _log_or_note, _MARKERS,
                                       _natural_key, _no_finite_note, _no_value_background,
                                       _positive, _set_log, _step_ticks, _subplots, _suptitle)


def _train_settings(run: dict) -> str:
  s = run.get("settings") or {}
  parts = [f"{s['optimizer']} lr {s['lr']:g}" if s.get("optimizer") and s.get("lr") else "",
           f"batch {s['batch_size']}" if s.get("batch_size") else "",
           ("no clipping" if s.get("clip") is None else f"clip {s['clip']:g}") if s else "",
           f"{run.get('steps_run', s.get('steps'))} steps" if s else "",
           f"logged every {s['every']}" if s.get("every") else "",
           f"{run['loss_name']} loss" if run.get("loss_name") else "",
           f"seed {s['seed']}" if s.get("seed") is not None else ""]
  acc = run.get("test_accuracy")
  if acc is not None:
    parts.append(f"test accuracy {100 * acc:.1f}%")
  return ", ".join(p for p in parts if p)


def plot_model_training(run: dict, path):
  """A --model run: the mini-batch loss per step and the global gradient
  norm at the logged steps; the settings and test accuracy in the title."""
  fig, axes = _subplots(1, 2, figsize=(12, 4.4))
  loss = np.asarray([np.nan if v is None else v for v in run["loss"]], float)
  axes[0].plot(np.arange(len(loss)), loss, color="C0", lw=1)
  if np.isfinite(loss).any() and np.all(loss[np.isfinite(loss)] > 0):
    _set_log(axes[0])
  if run["stopped_at"] is not None:
    axes[0].axvline(run["stopped_at"], color="firebrick", ls=":", label="NaN/Inf: stopped")
    axes[0].legend(fontsize=8)
  axes[0].set_title("mini-batch training loss"
                    + (f" ({run['loss_name']})" if run.get("loss_name") else ""))
  axes[0].set_xlabel("step")
  norms = _positive([np.nan if v is None else v for v in run["global_norm"]])
  axes[1].plot(run["logged_steps"], norms, "o-", color="C1", ms=3)
  if np.isfinite(norms).any():
    _set_log(axes[1])
  axes[1].set_title("global gradient norm (before clipping), logged steps")
  axes[1].set_xlabel("step")
  _no_finite_note(axes[1], [norms])
  _integer_ticks(axes[0])
  _step_ticks(axes[1], run["logged_steps"])
  for ax in axes:
    ax.grid(alpha=0.3, which="both")
  _suptitle(fig, f"Training {os.path.basename(run['model'])} on {run['data']}",
            _train_settings(run), 12)
  fig.tight_layout()
  return _io.save_figure(fig, path)


def plot_tap_heatmap(run: dict, path):
  """log10 ||dL/d tap|| for every tap (rows, in forward order) at every
  logged step (columns); a cell without a value (0, NaN/Inf, a step not
  measured) hatched grey and named in the legend."""
  names = run["taps"]
  grid = np.asarray([[np.nan if v is None else v for v in run["tap_stats"][n]["grad_norm"]]
                     for n in names], float)
  with np.errstate(divide="ignore", invalid="ignore"):
    logs = np.where(np.isfinite(grid) & (grid > 0), np.log10(grid), np.nan)
  steps = run["logged_steps"]
  fig, ax = _subplots(figsize=(min(14, 4 + 0.25 * len(steps)), 1.9 + 0.28 * len(names)))
  handle = _no_value_background(ax)
  if np.isfinite(logs).any():
    image = ax.imshow(logs, aspect="auto", cmap=_cmap("viridis"), interpolation="nearest")
    fig.colorbar(image, ax=ax, label="log10 ||dL/d tap||")
  else:
    ax.imshow(logs, aspect="auto", cmap=_cmap("viridis"), interpolation="nearest")
    ax.text(0.5, 0.5, "all values non-finite", transform=ax.transAxes, ha="center",
            color="firebrick")
  if np.isnan(logs).any():
    ax.legend(handles=[handle], loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8,
              frameon=False, borderaxespad=1.6)
  stride = max(1, len(names) // 40)
  ax.set_yticks(range(0, len(names), stride), [names[i] for i in range(0, len(names), stride)],
                fontsize=7)
  ticks = range(0, len(steps), max(1, len(steps) // 12))
  ax.set_xticks(list(ticks), [str(steps[i]) for i in ticks])
  ax.set_xlabel("step")
  ax.set_title("Backward signal at every tap over training (top: first tap; a row far darker "
               "than the rest stays vanishing)", fontsize=10)
  return _io.save_figure(fig, path)


def _leaf_kind(name: str) -> str:
  return name.rsplit("/", 1)[-1]


def _leaf_layer(name: str) -> str:
  return name.rsplit("/", 1)[0] if "/" in name else name


_LEAF_STYLE = {"kernel": ("-", "o"), "w": ("-", "o"), "weight": ("-", "o"),
               "bias": ("--", "s"), "b": ("--", "s"), "scale": (":", "^"),
               "embedding": ("-.", "D")}
MAX_LABELLED_LEAVES = 24


def _leaf_groups(names: list[str], most: int) -> dict[str, list[str]]:
  """At most ``most`` groups of parameter leaves, each named by the path
  its leaves share: per layer (the path less its last part) where that gives
  few enough, else per shorter prefix, else runs of consecutive leaves."""
  names = sorted(names, key=_natural_key)
  depth = max(n.count("/") for n in names)
  for keep in range(depth, 0, -1):
    groups: dict[str, list[str]] = {}
    for n in names:
      parts = n.split("/")
      key = "/".join(parts[:min(keep, len(parts) - 1)]) + "/*" if len(parts) > 1 else n
      groups.setdefault(key, []).append(n)
    if len(groups) <= most:
      return {(g[0] if len(g) == 1 else k): g for k, g in groups.items()}
  size = -(-len(names) // most)
  return {f"{chunk[0]} ... {chunk[-1]}" if len(chunk) > 1 else chunk[0]: chunk
          for chunk in (names[i:i + size] for i in range(0, len(names), size))}


def plot_update_ratios(run: dict, path):
  """||dW|| / ||W|| per parameter leaf at the logged steps, with the ~1e-3
  rule of thumb and the finding thresholds. Up to MAX_LABELLED_LEAVES leaves:
  a line each, labelled by its parameter path (colour: its layer; line style
  and marker: kernel, bias, scale, ...). More: a line per group of leaves
  (the median over its leaves, their min-max shaded), labelled by the path
  they share and how many leaves it holds."""
  from gradflow_jax.studies import _model_findings
  from gradflow_jax.watch import _watch
  fig, ax = _subplots(figsize=(11, 4.8))
  leaves = {k: _positive([np.nan if x is None else x for x in v])
            for k, v in run["update_ratio"].items()}
  steps = run["logged_steps"]
  drawn = list(leaves.values())
  grouped = len(leaves) > MAX_LABELLED_LEAVES
  if not grouped:
    layers = list(dict.fromkeys(_leaf_layer(n) for n in sorted(leaves, key=_natural_key)))
    cmap = matplotlib.colormaps.get_cmap("tab10" if len(layers) <= 10 else "tab20")
    kinds = list(dict.fromkeys(_leaf_kind(n) for n in leaves))
    other = iter([("-", m) for m in _MARKERS if m not in "os^D"] * 4)
    styles = {k: _LEAF_STYLE.get(k) or next(other) for k in kinds}
    for name in sorted(leaves, key=_natural_key):
      ls, marker = styles[_leaf_kind(name)]
      ax.plot(steps, leaves[name], ls=ls, marker=marker, ms=4, lw=1.2,
              color=cmap(layers.index(_leaf_layer(name)) % cmap.N), label=name)
  else:
    groups = _leaf_groups(list(leaves), 20)
    cmap = matplotlib.colormaps.get_cmap("tab20")
    for i, (label, members) in enumerate(groups.items()):
      block = np.vstack([leaves[m] for m in members])
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, med, hi = (np.nanmin(block, 0), np.nanmedian(block, 0), np.nanmax(block, 0))
      c = cmap(i % 20)
      ax.plot(steps, med, "-", marker=_MARKERS[i % len(_MARKERS)], ms=3, lw=1.2, color=c,
              label=f"{label} ({len(members)} leaves)" if len(members) > 1 else label)
      if len(members) > 1:
        ax.fill_between(steps, lo, hi, color=c, alpha=0.15, lw=0)
  _log_or_note(ax, drawn + [[_watch.UPDATE_RATIO_RULE]], what="ratios")
  ax.axhline(_watch.UPDATE_RATIO_RULE, color="k", ls="--", lw=1, label="rule of thumb 1e-3")
  for bound in (_model_findings.UPDATE_RATIO_LOW, _model_findings.UPDATE_RATIO_HIGH):
    ax.axhline(bound, color="firebrick", ls=":", lw=1)
  ax.plot([], [], color="firebrick", ls=":", label="finding thresholds")
  _no_finite_note(ax, drawn)
  missing = sum(int(np.isnan(v).sum()) for v in drawn if np.isfinite(v).any())
  if missing:
    ax.text(0.01, 0.01, f"{missing} points not drawn: ||W|| = 0 at that step (e.g. a bias "
            "initialised to 0: no ratio) or not finite", transform=ax.transAxes, fontsize=8,
            color="firebrick", va="bottom")
  ax.set_xlabel("step")
  _step_ticks(ax, steps)
  ax.set_title("Update-to-weight ratio ||dW|| / ||W|| per parameter" + (
      f" ({len(leaves)} leaves in {len(groups)} groups: line = median over the group, "
      "band = min to max)" if grouped else " (colour: layer; line style: kernel, bias, ...)"),
      fontsize=10)
  ax.grid(alpha=0.3, which="both")
  n_labels = len(ax.get_legend_handles_labels()[1])
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
            ncol=1 if n_labels <= 18 else 2)
  return _io.save_figure(fig, path)


def plot_histograms_over_steps(series: dict, steps: list, what: str, path,
                               max_taps: int = 12) -> None:
  """Small multiples, one per tap (the first ``max_taps`` in forward order):
  the share of entries in each signed-log bin (rows, ``HISTOGRAM_EDGES``) at
  each logged step (columns)."""
  from gradflow_jax.watch import _flow_step
  names = list(series)[:max_taps]
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  # constrained layout: each panel's tick labels keep clear of its neighbours
  fig, axes = _subplots(rows, cols, figsize=(3.6 * cols + 1.2, 2.9 * rows + 0.9), squeeze=False,
                        layout="constrained")
  edges = _flow_step.HISTOGRAM_EDGES
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
  _suptitle(fig, f"{what} over training{more}", "share of entries per signed-log bin (y; the "
            "row at 0 holds exact zeros) at each logged step (x); white: no entries in that bin",
            10)
  return _io.save_figure(fig, path)
