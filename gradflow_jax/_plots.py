"""PNG renderers. They draw numbers already measured; they compute nothing."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gradflow_jax import _activations, _io  # noqa: E402


def _colours(names):
  cmap = plt.get_cmap("tab10")
  uniq = list(dict.fromkeys(names))
  return {n: cmap(i % 10) for i, n in enumerate(uniq)}


_MARKERS = "osD^vP*Xph<>"


def _style(run):
  return "-" if run["role"] == "recommended" else "--"


def _line_kw(run, colours, markers):
  return dict(color=colours[run["activation"]], marker=markers[run["activation"]], ms=4,
              label=run["activation"] if run["role"] == "recommended" else None)


def _markers(names):
  return {n: _MARKERS[i % len(_MARKERS)] for i, n in enumerate(dict.fromkeys(names))}


def _figure_legend(fig, ax, runs):
  """One legend under the panels: a colour/marker per activation, solid or dashed by init."""
  if any(r["role"] != "recommended" for r in runs):
    ax.plot([], [], "k-", label="recommended init")
    ax.plot([], [], "k--", label="shared init")
  handles, labels = ax.get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 9), fontsize=9,
             bbox_to_anchor=(0.5, -0.06), frameon=False)


def plot_activation_stats(runs: list[dict], path) -> None:
  """std, saturation and dead fractions against layer index, a line per run."""
  colours = _colours([r["activation"] for r in runs])
  markers = _markers([r["activation"] for r in runs])
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
  panels = [("std", "activation std (ddof=1)", True),
            ("saturation_fraction", "saturated fraction", False),
            ("dead_fraction", "dead-unit fraction", False)]
  for ax, (field, title, log) in zip(axes, panels):
    for r in runs:
      v = np.asarray(r["activation_stats"][field], float)
      ax.plot(np.arange(len(v)), v, _style(r), **_line_kw(r, colours, markers))
    ax.set_title(title)
    ax.set_xlabel("hidden layer")
    if log:
      ax.set_yscale("log")
    else:
      ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
  _figure_legend(fig, axes[0], runs)
  fig.suptitle("Activation statistics per hidden layer")
  _io.save_figure(fig, path)


def _positive(v):
  v = np.asarray(v, float)
  return np.where(np.isfinite(v) & (v > 0), v, np.nan)


def plot_grad_norms(runs: list[dict], path) -> None:
  """||dL/dz_l|| per hidden layer and ||dL/dW|| per dense layer, log scale."""
  colours = _colours([r["activation"] for r in runs])
  markers = _markers([r["activation"] for r in runs])
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
  for r in runs:
    g = r["gradient_stats"]
    kw = _line_kw(r, colours, markers)
    axes[0].plot(_positive(g["preact_grad_norm"]), _style(r), **kw)
    kw.pop("label")
    axes[1].plot(_positive(g["weight_grad_norm"]), _style(r), **kw)
  axes[0].set_title("||dL/dz|| per hidden layer (backward signal)")
  axes[0].set_xlabel("hidden layer")
  axes[1].set_title("||dL/dW|| per dense layer (last = output layer)")
  axes[1].set_xlabel("dense layer")
  for ax in axes:
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
  _figure_legend(fig, axes[0], runs)
  fig.suptitle("Gradient norms at initialization: a line falling toward layer 0 = vanishing, "
               "rising = exploding")
  _io.save_figure(fig, path)


def plot_activation_curves(names, path, zmax: float = 6.0) -> None:
  """Each activation and its derivative; saturated regions shaded red, the
  zero-gradient (dead) region grey."""
  names = list(dict.fromkeys(_activations.canonical_name(n) for n in names))
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
  z = np.linspace(-zmax, zmax, 1201, dtype=np.float32)
  for ax, name in zip(axes.flat, names):
    act = _activations.get_activation(name)
    ax.plot(z, np.asarray(act(jnp.asarray(z))), color="C0", label="phi(z)")
    ax.plot(z, np.asarray(act.derivative(jnp.asarray(z), None)), color="C1", label="phi'(z)")
    lo, hi = act.saturation_bounds
    if lo > -zmax:
      ax.axvspan(-zmax, lo, color="red", alpha=0.15, label="saturated")
    if hi < zmax:
      ax.axvspan(hi, zmax, color="red", alpha=0.15)
    dead = np.asarray(act.is_inactive(jnp.asarray(z)))
    if dead.any() and act.saturates == "none":
      ax.fill_between(z, 0, 1, where=dead, transform=ax.get_xaxis_transform(),
                      color="grey", alpha=0.2, label="zero gradient")
    ax.axhline(act.max_derivative, color="C1", ls=":", lw=0.8)
    ax.set_title(f"{name}: max phi' = {act.max_derivative:.3g}")
    ax.set_ylim(-1.6, 3.2)
    ax.set_xlim(-zmax, zmax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  fig.suptitle("Activations and their derivatives (red: |phi'| < 5% of its maximum)")
  fig.tight_layout()
  _io.save_figure(fig, path)
