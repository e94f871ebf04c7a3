"""``forensics.png`` and ``forensics.json``: what the flight recorder held when
a trigger fired, every leaf's series relative to its own start, the first
movers named."""

from __future__ import annotations

import os

import numpy as np

from gradflow_jax import _io
from gradflow_jax.render._axes import _set_log, _subplots, _suptitle
from gradflow_jax.watch import _forensics

SHOWN = 6  # leaves drawn in colour and named (the rest grey)


def plot_forensics(analysis: dict, path=None):
  """Loss, then each leaf's gradient norm and update norm divided by its
  first value in the window (log scale): the first movers (ranked) in colour,
  their onsets marked, the trigger step dashed."""
  steps = np.asarray(analysis["steps"])
  fig, axes = _subplots(3, 1, figsize=(10, 9), sharex=True, layout="constrained")
  loss = np.asarray(analysis["loss"], float)
  axes[0].plot(steps, loss, color="black", marker=".")
  axes[0].set_ylabel("loss")
  positive = loss[np.isfinite(loss) & (loss > 0)]
  if positive.size and positive.max() > 100 * positive.min():  # a spike hides the rest
    _set_log(axes[0], "y")
    axes[0].set_ylabel("loss (log)")
  rank = {name: i for i, name in enumerate(analysis["ranking"])}
  leaves = sorted(analysis["leaves"], key=lambda leaf: -rank[leaf["name"]])  # first movers on top
  for ax, field, label, left_by in (
      (axes[1], "grad_norm", "||g|| / its first value", ("gradient norm", "non-finite gradient")),
      (axes[2], "update_norm", "||update|| / its first value", ("update norm",))):
    for leaf in leaves:
      series = np.asarray(leaf["series"][field], float)
      finite = np.isfinite(series) & (series > 0)
      if not finite.any():
        continue
      rel = np.where(finite, series / series[finite][0], np.nan)
      shown = rank[leaf["name"]] < SHOWN
      ax.plot(steps, rel, color=f"C{rank[leaf['name']]}" if shown else "0.8",
              lw=1.6 if shown else 0.8, label=leaf["name"] if shown else None)
      if shown and leaf["onset_step"] is not None and leaf["left_by"] in left_by:
        at = int(np.searchsorted(steps, leaf["onset_step"]))
        if at < len(steps) and np.isfinite(rel[at]):
          ax.plot(steps[at], rel[at], "o", color=f"C{rank[leaf['name']]}", ms=8, mfc="none")
    _set_log(ax, "y")
    ax.set_ylabel(label)
  trigger = analysis["trigger"]["step"]
  for ax in axes:
    if trigger is not None:
      ax.axvline(trigger, color="red", ls="--", lw=1)
    ax.grid(alpha=0.3)
  handles, labels = axes[1].get_legend_handles_labels()
  order = sorted(range(len(labels)), key=lambda i: rank[labels[i]])  # first mover first
  axes[1].legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8,
                 loc="upper left", title="first movers, ranked (circle: onset, on the panel "
                 "of what left its band)", title_fontsize=8)
  axes[2].set_xlabel("step")
  reasons = ", ".join(analysis["trigger"]["reasons"]) or "no trigger fired"
  _suptitle(fig, f"Flight recorder: {reasons}"
            + (f" at step {trigger}" if trigger is not None else ""),
            analysis["verdict"]["text"], 11)
  return _io.save_figure(fig, path)


def write_forensics(folder, state, names, sigmas: float = 6.0, plot: bool = True) -> list[str]:
  """Writes ``forensics.json`` (:func:`gradflow_jax.watch.analyse_forensics`;
  ``names``: the leaves' names or a pytree like the parameters) and, with
  ``plot``, ``forensics.png`` into ``folder`` atomically; returns their paths."""
  os.makedirs(folder, exist_ok=True)
  analysis = _forensics.analyse(state, names, sigmas)
  paths = [os.path.join(folder, "forensics.json")]
  _io.write_json(paths[0], analysis)
  if plot:
    paths.append(os.path.join(folder, "forensics.png"))
    plot_forensics(analysis, paths[1])
  return paths
