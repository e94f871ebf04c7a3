"""Figures of users' models: per-tap statistics and Jacobians, depth and
width studies. Their training runs' figures: ``_model_training_plots``."""

from __future__ import annotations

import re
import textwrap
import warnings

import matplotlib
import matplotlib.colors
import matplotlib.patches
import numpy as np

from gradflow_jax import _io
from gradflow_jax.render._axes import (_band, _cmap, _fit_log_limits, _integer_ticks,
                                       _log_or_note, _MARKERS, _no_value_background, _positive,
                                       _set_log, _subplots)


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
  """Per tap of a model, a panel per quantity (each its own labelled log
  axis, one tap axis): activation std, ||dL/dtap|| and the local Jacobian
  norm (median over examples; unconverged values left out and marked)."""
  names = list(stats.names)
  idx = np.arange(len(names))
  panels = [("std of the tapped tensor", "std", _positive(stats.activations.std), "o-", "C0"),
            ("||dL/d tap|| (backward signal)", "||dL/d tap||", _positive(stats.tap_grad_norm),
             "s-", "C1")]  # (title, y label, values, marker and line, colour)
  unconverged = None
  if jac is not None:
    med, unconverged = jacobian_summary(jac)
    panels.append(("||d tap / d its source tap||_2 (median over examples)",
                   "||d tap / d source||_2", _positive(med), "^", "C2"))
  fig, axes = _subplots(len(panels), 1, figsize=(max(7, 0.45 * len(names)),
                                                 1.6 + 2.1 * len(panels)),
                        squeeze=False, sharex=True)
  axes = axes[:, 0]
  for ax, (title, ylabel, values, style, colour) in zip(axes, panels):
    ax.plot(idx, values, marker=style[0], color=colour, ms=5, ls="-" if "-" in style else "none")
    ax.set_title(title, fontsize=9, loc="left")
    log = _log_or_note(ax, [values], what="values")
    ax.set_ylabel(ylabel + (" (log)" if log else ""), fontsize=9)
    ax.grid(alpha=0.3, which="both")
  if unconverged is not None and unconverged.any():
    ax = axes[-1]
    ax.plot(idx[unconverged], np.full(int(unconverged.sum()), 0.05), "x", color="red",
            transform=ax.get_xaxis_transform(), ls="none",
            label="Jacobian not converged (not drawn)")
    ax.legend(fontsize=8, loc="upper right")
  stride = max(1, -(-len(names) // 60))
  axes[-1].set_xticks(idx[::stride], names[::stride], rotation=60, ha="right", fontsize=7)
  axes[-1].set_xlim(-0.5, len(names) - 0.5)
  fig.suptitle("Per tap, in the order the model records them")
  fig.tight_layout()
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
      _set_log(ax)
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


_NUMBER = re.compile(r"(\d+)")


def _number_slots(name: str) -> list[tuple[str, int]]:
  """The numbers in a tap name, each keyed by what names it: the letters
  before it in its path part ("layer_" in ".../layer_3", "block" in
  "block2_in"), or the part before it for a bare number ("layers/" in
  "layers/1/input")."""
  out, parts = [], name.split("/")
  for i, part in enumerate(parts):
    for m in _NUMBER.finditer(part):
      prefix = part[:m.start()]
      if not prefix:
        prefix = (parts[i - 1] + "/") if i and part.isdigit() else "#"
      out.append((prefix, int(m.group(1))))
  return out


def tap_blocks(records: list[dict]) -> tuple[list[str], list[str | None], list[str]]:
  """Groups the taps of the deepest network of a depth study by block.

  The block index is a number in the tap names whose count of distinct
  values grows with depth (``layer_`` of ``blocks/.../layer_3``, ``layers/``
  of ``layers/2/input``, ``block`` of ``block2/pre``; ``conv`` and ``norm``
  of ``conv2``, ``norm2/input``), or where a single depth was studied, the
  numbers with the most values (at least 3). Returns the deepest network's
  taps, each tap's block label (named by the key with most values, e.g.
  ``layer_3``; None for taps outside any block: the stem before them, the
  head after) and the keys, most values first (empty when none qualifies).
  """
  deepest = max(records, key=lambda d: len(d["taps"]))
  shallowest = min(records, key=lambda d: len(d["taps"]))

  def counts(taps):
    seen: dict[str, set] = {}
    for t in taps:
      for key, v in _number_slots(t):
        seen.setdefault(key, set()).add(v)
    return {k: len(v) for k, v in seen.items()}
  deep, shallow = counts(deepest["taps"]), counts(shallowest["taps"])
  if deepest is shallowest:
    top = max(deep.values(), default=0)
    candidates = {k: n for k, n in deep.items() if n >= 3 and n >= top - 1}
  else:
    candidates = {k: n for k, n in deep.items() if n > shallow.get(k, 0)}
  keys = sorted(candidates, key=lambda k: (-candidates[k], len(k)))
  labels = []
  for t in deepest["taps"]:
    slots = dict(reversed(_number_slots(t)))  # the first number of each key
    found = [slots[k] for k in keys if k in slots]
    labels.append(f"{keys[0]}{found[0]}" if found else None)
  return list(deepest["taps"]), labels, keys


def plot_depth_layer_heatmap(result: dict, label: str, path):
  """Depth x tap heatmap of the mean squared singular value of d tap / d
  source (median over seeds; Hutchinson): where along the network the
  signal grows or shrinks, for every depth studied. Columns are the taps of
  the deepest network, grouped by block (separators, block labels below);
  a shallower network's taps sit under the same names, so its missing blocks
  are a solid grey gap; a tap without a value (0 or NaN/Inf) is hatched."""
  records = result["depths"]
  taps, blocks, keys = tap_blocks(records)
  column = {t: i for i, t in enumerate(taps)}
  aligned = all(t in column for d in records for t in d["taps"])
  width = len(taps) if aligned else max(len(d["taps"]) for d in records)
  grid = np.full((len(records), width), np.nan)
  absent = np.ones((len(records), width), bool)
  for i, d in enumerate(records):
    with warnings.catch_warnings():  # a tap NaN in every seed: NaN, not a warning
      warnings.simplefilter("ignore", RuntimeWarning)
      v = np.nanmedian(np.asarray(d["tap_mean_sq_singular_value"], float), axis=0)
    cols = [column[t] for t in d["taps"]] if aligned else list(range(len(d["taps"])))
    with np.errstate(divide="ignore", invalid="ignore"):
      grid[i, cols] = np.where(np.isfinite(v) & (v > 0), np.log10(v), np.nan)
    absent[i, cols] = False
  fig, ax = _subplots(figsize=(12, 2.2 + 0.55 * len(records)))
  no_value = _no_value_background(ax)
  finite = grid[np.isfinite(grid)]
  if finite.size:
    lim = max(abs(finite.min()), abs(finite.max()), 0.5)
    im = ax.imshow(grid, aspect="auto", cmap=_cmap("RdBu_r"), vmin=-lim, vmax=lim,
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label="log10 mean s^2 (0: neither grows nor shrinks)", pad=0.01)
  else:
    ax.imshow(grid, aspect="auto", cmap=_cmap("RdBu_r"), interpolation="nearest")
    ax.text(0.5, 0.5, "no finite values (Jacobians not measured)", ha="center",
            transform=ax.transAxes)
  handles = []
  if absent.any():
    grey = matplotlib.colors.ListedColormap(["#b0b0b0"])
    ax.imshow(np.where(absent, 1.0, np.nan), aspect="auto", cmap=grey.with_extremes(
        bad=(0, 0, 0, 0)), interpolation="nearest")
    handles.append(matplotlib.patches.Patch(color="#b0b0b0", label="no such tap: the network "
                                            "at this depth is shallower"))
  if (np.isnan(grid) & ~absent).any():
    handles.append(no_value)
  ax.set_yticks(range(len(records)), [str(d["depth"]) for d in records])
  ax.set_ylabel("depth")
  ax.set_xlim(-0.5, width - 0.5)
  ax.set_title(f"{label}: mean squared singular value of d tap / d {records[0]['source']}, "
               "median over seeds", fontsize=10)
  if aligned and keys:
    # a separator at each block's start; the block's name under its middle
    runs = []
    for i, b in enumerate(blocks):
      if runs and runs[-1][0] == b:
        runs[-1][2] = i
      else:
        runs.append([b, i, i])
    named = [r for r in runs if r[0] is not None]
    stride = max(1, -(-len(named) // 24))
    ticks, labels = [], []
    for n, (b, lo, hi) in enumerate(named):
      ax.axvline(lo - 0.5, color="k", lw=0.6, alpha=0.6)
      if n % stride == 0:
        ticks.append((lo + hi) / 2)
        labels.append(b)
    ax.axvline(named[-1][2] + 0.5, color="k", lw=0.6, alpha=0.6)
    outside = []  # the taps before the first block (stem) and after the last (head)
    crowded = len(taps) > 150  # a label beside a block's would collide: named in the note
    for b, lo, hi in runs:
      if b is None:
        part = "stem" if lo < named[0][1] else "head" if lo > named[-1][2] else "between"
        if not crowded:
          ticks.append((lo + hi) / 2)
          labels.append(taps[lo] if lo == hi else part)
        if lo != hi or crowded:
          outside.append(f"{part}: {', '.join(taps[lo:hi + 1])}")
    order = np.argsort(ticks)
    ax.set_xticks(np.asarray(ticks)[order], [labels[i] for i in order], rotation=60, ha="right",
                  fontsize=7)
    sizes = [hi - lo + 1 for _, lo, hi in named]
    b0, lo0, hi0 = named[sizes.index(max(sizes))]  # a full block shows what one holds
    inside = []
    for t in taps[lo0:hi0 + 1]:
      for k in keys:
        t = re.sub(r"(?<![0-9A-Za-z])" + re.escape(k) + str(_block_number(b0)) + r"(?![0-9])",
                   k + ("k" if k[-1] in "/_-." else "<k>"), t) if k != "#" else t
      inside.append(t)
    each = f"{max(sizes)} taps each" if len(set(sizes)) == 1 else f"up to {max(sizes)} taps each"
    named_by = " or ".join(f"'{k}'" for k in keys)
    note = (f"blocks: the number k after {named_by} in the tap names ({len(named)} blocks in the "
            f"deepest network, {each}); within a block, left to right: "
            + ", ".join(inside) + "".join(f". {o}" for o in outside))
    ax.set_xlabel("tap (input side on the left), grouped by block\n"
                  + textwrap.fill(note, 200), fontsize=7.5)
  else:
    _integer_ticks(ax)
    ax.set_xlabel("tap, in recording order (input side on the left)")
  if handles:
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.06), fontsize=8,
              ncol=len(handles), frameon=False)
  return _io.save_figure(fig, path)


def _block_number(label: str) -> int:
  return int(_NUMBER.findall(label)[-1])


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
    for j, (c, i) in enumerate(zip(colours, pick)):
      if k == 0:
        v = np.asarray([r["rms_init"][:, i].mean() for r in records])
      else:
        v = np.asarray([r["rms_change"][:, k - 1, i].mean() for r in records])
      ok = np.isfinite(v) & (v > 0)
      ax.plot(widths[ok], v[ok], "-", marker=_MARKERS[j % len(_MARKERS)], color=c, ms=4,
              label=names[i] if k == 0 else None)
    ax.set_xscale("log", base=2)
    ax.set_xlim(widths.min() / 1.2, widths.max() * 1.2)
    _log_or_note(ax, [np.asarray(l.get_ydata(), float) for l in ax.lines], what="values")
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("width")
    ax.set_title("rms(tap) at init" if k == 0 else f"rms(tap_t - tap_0), t = {k}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
  s = result["settings"]
  fig.legend(loc="lower center", ncol=min(5, len(pick)), fontsize=8, frameon=False,
             bbox_to_anchor=(0.5, -0.08 - 0.04 * (len(pick) // 5)))
  depth = f", depth {s['depth']}" if s.get("depth") is not None else ""
  fig.suptitle(f"Coordinate check of {label} ({s['optimizer']}, lr {s['lr']}, {steps} steps"
               f"{depth}, mean of {s['seeds']} seed{'s' * (s['seeds'] != 1)})\nflat lines: "
               "width-stable; lines rising with width: blow up as the model widens")
  fig.tight_layout(rect=(0, 0, 1, 0.95))
  return _io.save_figure(fig, path)
