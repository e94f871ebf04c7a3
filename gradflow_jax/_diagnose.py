"""Findings: the seed's debugging checklist applied to measured statistics.

Runs on the host, on numbers already measured (it never computes statistics).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# A layer is flagged as saturated when more than 10% of its unit-example pairs
# sit in a flat tail: each such pair passes < 5% of the gradient, so a tenth of
# the layer's backward signal is lost there, and it compounds with depth.
SATURATION_WARN_FRACTION = 0.10
# More than 10% of a layer's units inactive on the whole batch wastes a tenth of
# its capacity and blocks that share of the gradient for every example.
DEAD_WARN_FRACTION = 0.10
# ||dL/dz|| at the first hidden layer against the last: a ratio below 1/100
# means early layers learn 100x slower than late ones (vanishing); above 100,
# early updates dominate and blow up (exploding).
VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2
# The activations' std at the last hidden layer below 1/100 of the first's:
# the forward signal collapses toward a constant.
COLLAPSE_RATIO = 1e-2

SEVERITIES = ("error", "warning", "info")


class Finding(NamedTuple):
  """One diagnosis: what, where, the numbers behind it, and what to try."""
  severity: str
  kind: str
  layers: tuple[int, ...]
  message: str
  evidence: dict
  fix: str


def _layers(mask) -> tuple[int, ...]:
  return tuple(int(i) for i in np.nonzero(mask)[0])


def _nonfinite(acts, grads) -> list[Finding]:
  out = []
  counts = np.asarray(acts["nonfinite"])
  if counts.sum():
    first = int(np.argmax(counts > 0))
    out.append(Finding("error", "nonfinite", _layers(counts > 0),
                       f"NaN/Inf in activations from hidden layer {first} on",
                       {"first_layer": first, "count": int(counts.sum())},
                       "check inputs and weights for NaN/Inf; reduce the learning rate; "
                       "inspect input scaling"))
  if grads is not None and (not np.isfinite(grads["loss"]) or np.asarray(grads["nonfinite"]).any()):
    bad = np.asarray(grads["nonfinite"]) > 0
    out.append(Finding("error", "nonfinite_gradients", _layers(bad),
                       "loss or gradients are NaN/Inf",
                       {"loss": float(grads["loss"]), "layers": list(_layers(bad))},
                       "reduce the learning rate, clip gradients (optax.clip_by_global_norm), "
                       "check for unstable operations"))
  return out


def _saturation_and_dead(acts) -> list[Finding]:
  out = []
  sat = np.asarray(acts["saturation_fraction"])
  if np.nanmax(sat, initial=0) > SATURATION_WARN_FRACTION:
    where = sat > SATURATION_WARN_FRACTION
    out.append(Finding("warning", "saturation", _layers(where),
                       f"saturated units: up to {np.nanmax(sat):.0%} of pairs in a flat tail",
                       {"max_fraction": float(np.nanmax(sat))},
                       "use Xavier initialization with gain 1 (not larger), normalize inputs, "
                       "add LayerNorm, or switch to a non-saturating activation"))
  dead = np.asarray(acts["dead_fraction"])
  if np.nanmax(dead, initial=0) > DEAD_WARN_FRACTION:
    where = dead > DEAD_WARN_FRACTION
    out.append(Finding("warning", "dead_units", _layers(where),
                       f"dead units: up to {np.nanmax(dead):.0%} of a layer's units never active",
                       {"max_fraction": float(np.nanmax(dead))},
                       "use He initialization, smaller learning rates, non-negative biases, or "
                       "leaky ReLU / GELU / SiLU"))
  return out


def _flow(acts, grads) -> list[Finding]:
  out = []
  std = np.asarray(acts["std"])
  if std.size > 1 and np.isfinite(std[[0, -1]]).all() and std[0] > 0 and std[-1] / std[0] < COLLAPSE_RATIO:
    out.append(Finding("warning", "signal_collapse", (len(std) - 1,),
                       f"activations collapse: std falls from {std[0]:.3g} to {std[-1]:.3g}",
                       {"first_std": float(std[0]), "last_std": float(std[-1])},
                       "initialization too small for the activation: use the recommended init"))
  if grads is None:
    return out
  g = np.asarray(grads["preact_grad_norm"])
  if g.size < 2 or not np.isfinite(g[[0, -1]]).all() or g[-1] <= 0:
    return out
  ratio = g[0] / g[-1]
  evidence = {"first_layer_grad": float(g[0]), "last_layer_grad": float(g[-1]), "ratio": float(ratio)}
  if ratio < VANISHING_RATIO:
    out.append(Finding("warning", "vanishing_gradients", (0,),
                       f"vanishing gradients: ||dL/dz|| at layer 0 is {ratio:.1e} x the last layer's",
                       evidence, "match the initializer to the activation (He for ReLU, Xavier "
                       "for tanh), add normalization or residual connections"))
  elif ratio > EXPLODING_RATIO:
    out.append(Finding("warning", "exploding_gradients", (0,),
                       f"exploding gradients: ||dL/dz|| at layer 0 is {ratio:.1e} x the last layer's",
                       evidence, "reduce the weight scale (gain), clip gradients with "
                       "optax.clip_by_global_norm, lower the learning rate"))
  return out


def diagnose_stats(acts: dict, grads: dict | None = None) -> list[Finding]:
  """Findings from host copies of ActivationStats / GradientStats (dicts or
  NamedTuples of arrays), most severe first."""
  acts = acts._asdict() if hasattr(acts, "_asdict") else acts
  if grads is not None and hasattr(grads, "_asdict"):
    grads = grads._asdict()
  found = _nonfinite(acts, grads) + _saturation_and_dead(acts) + _flow(acts, grads)
  return sorted(found, key=lambda f: SEVERITIES.index(f.severity))
