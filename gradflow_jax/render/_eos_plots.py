"""The edge-of-stability figure (``train --experiment edge-of-stability``):
the full-batch loss per step, and the sharpness per measured step with each
learning rate's 2 / lr threshold dashed in the same colour."""

from __future__ import annotations

import numpy as np

from gradflow_jax import _io
from gradflow_jax.render._axes import _set_log, _subplots, _suptitle


def plot_edge_of_stability(result: dict, path=None):
  """``result``: :func:`~gradflow_jax.studies._edge_of_stability.edge_of_stability`'s
  layout. ``path=None`` returns the Figure."""
  fig, (ax_loss, ax_sharp) = _subplots(1, 2, figsize=(13, 4.8), layout="constrained")
  unconverged = False
  for i, run in enumerate(result["runs"]):
    colour = f"C{i}"
    loss = np.asarray(run["loss"], float)
    ax_loss.plot(np.arange(len(loss)), loss, color=colour, lw=1,
                 label=f"lr {run['lr']:g} (loss rose on {run['loss_increases']} steps)")
    steps = np.asarray(run["sharpness_steps"])
    sharp, ok = np.asarray(run["sharpness"], float), np.asarray(run["converged"], bool)
    ax_sharp.plot(steps, np.where(ok, sharp, np.nan), "-", color=colour, lw=1.3,
                  label=f"lr {run['lr']:g}")
    if (~ok).any():
      unconverged = True
      ax_sharp.plot(steps[~ok], sharp[~ok], "o", ms=4, mfc="none", color=colour)
    ax_sharp.axhline(run["threshold"], color=colour, ls="--", lw=1)
  ax_sharp.plot([], [], "k--", lw=1, label="2 / lr (same colour)")
  if unconverged:
    ax_sharp.plot([], [], "o", mfc="none", color="0.4", label="not converged: not a measurement")
  finite = np.concatenate([np.asarray(r["loss"], float) for r in result["runs"]])
  finite = finite[np.isfinite(finite)]
  if finite.size and (finite > 0).all():
    _set_log(ax_loss)
  ax_loss.set_title("full-batch training loss", fontsize=10)
  ax_sharp.set_title("sharpness (top Hessian eigenvalue) against its threshold 2 / lr (dashed)",
                     fontsize=10)
  ax_sharp.set_ylim(bottom=0)
  for ax in (ax_loss, ax_sharp):
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper right" if ax is ax_loss else "center right")
  s = result["settings"]
  _suptitle(fig, "Gradient descent at the edge of stability (Cohen et al. 2021), digits",
            f"{s['optimizer']}, {s['loss']}, {s['examples']} examples, {s['activation']} MLP "
            f"{s['depth']} x {s['width']}, sharpness every {s['every']} steps by "
            f"{s['lanczos_steps']} warm-started Lanczos steps, seed {s['seed']}")
  return _io.save_figure(fig, path)
