"""Figures of users' models: per-tap statistics and Jacobians, training runs
(tap heatmaps, update ratios, histograms over steps), depth and width
studies."""

from __future__ import annotations

import os
import warnings

import matplotlib
import matplotlib.figure
import matplotlib.lines
import numpy as np

from gradflow_jax import _io
from gradflow_jax.render._plots import (_band, _fit_log_limits, _MARKERS, _no_finite_note,
                                        _positive, _subplots)


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
  from gradflow_jax.watch import _flow_step
  names = list(series)[:max_taps]
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = _subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
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
