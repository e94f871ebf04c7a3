"""Findings: the seed's debugging checklist applied to measured statistics.

Runs on the host, on numbers already measured (it never computes statistics).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gradflow_jax.measure import _rows

# A layer is flagged as saturated when more than 10% of its unit-example pairs
# sit in a flat tail: each such pair passes < 5% of the gradient, so a tenth of
# the layer's backward signal is lost there, and it compounds with depth.
SATURATION_WARN_FRACTION = 0.10
# More than a quarter of a layer's units inactive on the whole batch. Healthy
# He-initialized deep ReLU networks already show 10-20% on a batch of 64 at
# init (deep representations correlate across examples, so a unit's sign is
# shared by all of them); a quarter and more is the dying-ReLU pathology.
DEAD_WARN_FRACTION = 0.25
# a layer over DEAD_WARN_FRACTION with at least this share of its dead fraction
# always active is collapsed examples, not dying units (healthy batches of
# distinct inputs have almost no unit active on every example)
COLLAPSE_ACTIVE_SHARE = 1 / 3
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
                       "check that layer's inputs and weights for NaN/Inf (at "
                       "initialization, the inputs); in training, lower the learning rate"))
  if grads is not None and (not np.isfinite(grads["loss"]) or np.asarray(grads["nonfinite"]).any()):
    bad = np.asarray(grads["nonfinite"]) > 0
    out.append(Finding("error", "nonfinite_gradients", _layers(bad),
                       "loss or gradients are NaN/Inf",
                       {"loss": float(grads["loss"]), "layers": list(_layers(bad))},
                       "check for unstable operations (log, division, exp) and the labels; "
                       "in training, clip gradients (optax.clip_by_global_norm)"))
  return out


def input_findings(x, y=None, params=None, n_classes: int | None = None) -> list[Finding]:
  """Errors whose cause is in what the model was given, not in its training:
  non-finite inputs, non-finite parameters (named by leaf), labels outside
  [0, n_classes). Host-only."""
  import jax
  out = []
  xs = [np.asarray(v) for v in jax.tree.leaves(x)]
  bad = sum(int(np.size(v) - np.isfinite(v).sum()) for v in xs
            if np.issubdtype(v.dtype, np.inexact))
  if bad:
    out.append(Finding("error", "nonfinite_inputs", (), f"the inputs contain {bad} NaN/Inf "
                       "values", {"count": bad}, "clean or impute the inputs before the model "
                       "sees them (np.nan_to_num, or drop those examples)"))
  if params is not None:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [jax.tree_util.keystr(k) for k, v in leaves
             if np.issubdtype(np.asarray(v).dtype, np.inexact)
             and not np.isfinite(np.asarray(v)).all()]
    if names:
      out.append(Finding("error", "nonfinite_parameters", (), "parameters contain NaN/Inf: "
                         + ", ".join(names[:4]) + (f" and {len(names) - 4} more"
                                                   if len(names) > 4 else ""),
                         {"leaves": names}, "re-initialize those parameters, or restore a "
                         "checkpoint from before they went non-finite"))
  if y is not None and n_classes is not None:
    yn = np.asarray(y)
    if np.issubdtype(yn.dtype, np.integer) and yn.size and (yn.min() < 0
                                                            or yn.max() >= n_classes):
      out.append(Finding("error", "labels_out_of_range", (), f"labels span [{yn.min()}, "
                         f"{yn.max()}] but the model has {n_classes} outputs",
                         {"min": int(yn.min()), "max": int(yn.max()), "n_classes": n_classes},
                         f"labels must be integers in [0, {n_classes}): remap them, or give "
                         "the model one output per class"))
  return out


def _blame(found: list[Finding], causes: list[Finding]) -> list[Finding]:
  """Non-finite findings point at the cause when it is known, instead of
  generic advice (a NaN at initialization is not a learning-rate problem)."""
  if not causes:
    return found
  what = "; ".join(c.message for c in causes)
  return causes + [f._replace(fix=f"caused by the input: {what}")
                   if f.kind in ("nonfinite", "nonfinite_gradients") else f for f in found]


def _fraction_finding(values, threshold, code, what, fix) -> list[Finding]:
  """A warning naming the layers whose fraction exceeds ``threshold``."""
  values = np.asarray(values)
  top = np.nanmax(values, initial=0)
  if not top > threshold:
    return []
  return [Finding("warning", code, _layers(values > threshold), what.format(top=top),
                  {"max_fraction": float(top)}, fix)]


def _saturation_and_dead(acts) -> list[Finding]:
  """Saturation and dead units; a layer whose units are constant on the
  whole batch both ways (as many always active as always inactive, to
  COLLAPSE_ACTIVE_SHARE) is reported as collapsed examples, not dying units."""
  dead = np.asarray(acts["dead_fraction"], float)
  active = np.asarray(acts.get("always_active_fraction", np.full(dead.shape, np.nan)), float)
  collapsed = (dead > DEAD_WARN_FRACTION) & (np.nan_to_num(active) >= COLLAPSE_ACTIVE_SHARE * dead)
  found = (_fraction_finding(
              acts["saturation_fraction"], SATURATION_WARN_FRACTION, "saturation",
              "saturated units: up to {top:.0%} of pairs in a flat tail",
              "normalize inputs, add LayerNorm, or switch to a non-saturating activation; "
              "for the weight scale see the criticality finding (gf.theory.critical_sigma_w)")
           + _fraction_finding(
              np.where(collapsed, 0.0, dead), DEAD_WARN_FRACTION, "dead_units",
              "dead units: up to {top:.0%} of a layer's units never active",
              "use He initialization, smaller learning rates, non-negative biases, or "
              "leaky ReLU / GELU / SiLU"))
  if collapsed.any():
    worst = int(np.argmax(np.where(collapsed, dead, -1)))
    found.append(Finding(
        "warning", "batch_collapse", _layers(collapsed),
        f"the examples collapse onto one direction: up to {dead[worst]:.0%} of a layer's units "
        f"are inactive and {active[worst]:.0%} active on every example (units constant on the "
        "batch, not dying ones)",
        {"max_fraction": float(dead[worst]), "always_active_fraction": float(active[worst])},
        "the network maps different inputs to nearly the same point with depth (ReLU-like nets "
        "at criticality: the correlation map's fixed point is c* = 1, Schoenholz et al. 2017): "
        "add residual connections or normalization, or use fewer layers; fixes for dying units "
        "will not help"))
  return found


def _flow(acts, grads) -> list[Finding]:
  out = []
  std = np.asarray(acts["std"])
  if std.size > 1 and np.isfinite(std[[0, -1]]).all() and std[0] > 0 and std[-1] / std[0] < COLLAPSE_RATIO:
    out.append(Finding("warning", "signal_collapse", (len(std) - 1,),
                       f"activations collapse: std falls from {std[0]:.3g} to {std[-1]:.3g}",
                       {"first_std": float(std[0]), "last_std": float(std[-1]),
                        "weight_scale": "increase"},
                       "increase the weight scale toward the critical sigma_w "
                       "(gf.theory.critical_sigma_w), or add normalization"))
  if grads is None:
    return out
  g = np.asarray(grads["preact_grad_norm"])
  if g.size < 2 or not np.isfinite(g[[0, -1]]).all() or g[-1] <= 0:
    return out
  if not np.any(g[:-1]):  # exactly zero everywhere but the output: a zero head
    out.append(Finding("info", "zero_output_layer", (len(g) - 1,),
                       "no gradient reaches the layers before the output: the output layer "
                       "is zero (a zero-initialized head, the ViT convention), so every hidden "
                       "gradient is exactly 0 at step 0 by design", {"last_layer_grad": float(g[-1])},
                       "nothing to fix if the head is zero on purpose: the first update makes "
                       "it nonzero; measure gradient flow after a few steps"))
    return out
  ratio = g[0] / g[-1]
  evidence = {"first_layer_grad": float(g[0]), "last_layer_grad": float(g[-1]), "ratio": float(ratio)}
  if ratio < VANISHING_RATIO:
    out.append(Finding("warning", "vanishing_gradients", (0,),
                       f"vanishing gradients: ||dL/dz|| at layer 0 is {ratio:.1e} x the last layer's",
                       {**evidence, "weight_scale": "increase"},
                       "increase the weight scale toward the critical sigma_w (gf.theory."
                       "critical_sigma_w; He for ReLU), add normalization or residual connections"))
  elif ratio > EXPLODING_RATIO:
    out.append(Finding("warning", "exploding_gradients", (0,),
                       f"exploding gradients: ||dL/dz|| at layer 0 is {ratio:.1e} x the last layer's",
                       {**evidence, "weight_scale": "decrease"},
                       "reduce the weight scale toward the critical sigma_w (gf.theory."
                       "critical_sigma_w), clip gradients with optax.clip_by_global_norm"))
  return out


def diagnose_stats(acts: dict, grads: dict | None = None) -> list[Finding]:
  """Findings from host copies of ActivationStats / GradientStats (dicts or
  NamedTuples of arrays), most severe first."""
  acts = acts._asdict() if hasattr(acts, "_asdict") else acts
  if grads is not None and hasattr(grads, "_asdict"):
    grads = grads._asdict()
  found = _nonfinite(acts, grads) + _saturation_and_dead(acts) + _flow(acts, grads)
  return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


# The input-output Jacobian's mean squared singular value (chi_1^L in
# mean-field theory) beyond 100 or below 1/100: signals and gradients change
# by that factor between input and output.
JACOBIAN_EXPLODING = 1e2
JACOBIAN_VANISHING = 1e-2
def _jacobian_findings(m1: float | None) -> list[Finding]:
  if m1 is None or not np.isfinite(m1):
    return []
  ev = {"mean_sq_singular_value": float(m1)}
  up, down = {**ev, "weight_scale": "increase"}, {**ev, "weight_scale": "decrease"}
  if m1 > JACOBIAN_EXPLODING:
    return [Finding("warning", "exploding_jacobian", (), f"input-output Jacobian amplifies: "
                    f"mean squared singular value {m1:.2e}", down,
                    "reduce the weight scale toward the critical sigma_w (gf.theory."
                    "critical_sigma_w), add normalization, clip gradients")]
  if m1 < JACOBIAN_VANISHING:
    return [Finding("warning", "vanishing_jacobian", (), f"input-output Jacobian attenuates: "
                    f"mean squared singular value {m1:.2e}", up,
                    "increase the weight scale toward criticality (He for ReLU), or add "
                    "residual connections")]
  return []


def _tap_finding(f: Finding, names, idx) -> Finding:
  """A per-layer finding re-addressed to taps: ``layers`` index the model's
  taps, and the message and evidence name them."""
  layers = tuple(int(idx[i]) for i in f.layers if i < len(idx))
  taps = [names[i] for i in layers]
  shown = ", ".join(taps[:4]) + (f" and {len(taps) - 4} more" if len(taps) > 4 else "")
  message = f.message.replace("hidden layer", "tap").replace("layer 0", "the first tap")
  return f._replace(layers=layers, message=f"{message} (at {shown})" if taps else message,
                    evidence={**f.evidence, "taps": taps})


def diagnose_model(stats, jacobians=None, causes=(), input_jacobian=None) -> list[Finding]:
  """Findings for any probed model from measurements already made (host-only:
  it never runs the model).

  Args:
    stats: :class:`ModelFlowStats` (host or device arrays).
    jacobians: optional :class:`TapJacobians`; unconverged norms are reported
      as such, never used as measurements.
    causes: findings about the input (:func:`input_findings`); when there
      are any, only they and the non-finite findings they explain are given.
    input_jacobian: optional (batch,) mean squared singular value of the
      input-output Jacobian; its median is tested like the built-in MLP's.

  Saturation and dead units are read on taps whose activation is known (the
  tap is that activation's input) and, as units exactly 0 on every example
  (a ReLU's output), on every other non-``pre`` tap that is not simply the
  output of such an activation. The
  vanishing/exploding test compares ||dL/d tap|| at the first and last
  ``pre`` taps (all taps when there are none).
  """
  import jax
  s = jax.device_get(stats)
  names = list(s.names)
  a = {k: np.asarray(v, float) for k, v in s.activations._asdict().items()}
  known = np.asarray([act is not None and act != "identity" for act in s.activation_names])
  found = []
  nonfinite = a["nonfinite"]
  if nonfinite.sum():
    first = int(_rows.first_flagged(nonfinite > 0))
    found.append(Finding("error", "nonfinite", _layers(nonfinite > 0),
                         f"NaN/Inf in the model's tensors from tap {names[first]} on",
                         {"first_tap": names[first], "count": int(nonfinite.sum())},
                         "check inputs and weights for NaN/Inf at that layer; look for an "
                         "unstable operation (log, division, exp) just before it"))
  if not (np.isfinite(float(s.loss)) and np.isfinite(float(s.global_norm))):
    found.append(Finding("error", "nonfinite_gradients", (), "loss or gradients are NaN/Inf",
                         {"loss": float(s.loss), "global_norm": float(s.global_norm)},
                         "check the loss inputs (labels in range, no log(0)); clip gradients "
                         "with optax.clip_by_global_norm"))
  # a tap right after a pre tap of known activation is that activation's output:
  # its units were tested on the pre tap already
  explained = np.asarray([i > 0 and bool(known[i - 1]) and s.roles[i - 1] == "pre"
                          and s.roles[i] != "pre" for i in range(len(names))])
  tested = np.nonzero(known | (~explained & np.asarray([r != "pre" for r in s.roles])))[0]
  sub = {"dead_fraction": a["dead_fraction"][tested],
         "always_active_fraction": a["always_active_fraction"][tested],
         "saturation_fraction": np.nan_to_num(a["saturation_fraction"][tested])}
  found += [_tap_finding(f, names, tested) for f in _saturation_and_dead(sub)]
  pre = np.asarray([r == "pre" for r in s.roles])
  grad_idx = np.nonzero(pre)[0] if pre.sum() >= 2 else np.arange(len(names))
  flow = _flow({"std": a["std"][grad_idx]},
               {"preact_grad_norm": np.asarray(s.tap_grad_norm, float)[grad_idx]})
  found += [_tap_finding(f, names, grad_idx) for f in flow if f.kind != "signal_collapse"]
  post = np.nonzero(np.asarray([r == "post" for r in s.roles]))[0]
  if post.size >= 2:
    found += [_tap_finding(f, names, post) for f in _flow({"std": a["std"][post]}, None)]
  if jacobians is not None:
    found += _unconverged(jax.device_get(jacobians))
  if input_jacobian is not None and np.size(input_jacobian):
    found += _jacobian_findings(float(np.median(np.asarray(input_jacobian, float))))
  if causes:
    found = _blame([f for f in found if f.kind.startswith("nonfinite")], list(causes))
  return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


def _unconverged(jac) -> list[Finding]:
  norm, conv = np.asarray(jac.norm), np.asarray(jac.converged)
  bad = np.isfinite(norm) & ~conv
  if not bad.any():
    return []
  taps = [jac.names[i] for i in np.nonzero(bad.any(0))[0]]
  return [Finding("info", "unconverged_jacobian", tuple(np.nonzero(bad.any(0))[0].tolist()),
                  f"Jacobian norms did not converge at {len(taps)} taps: shown as estimates",
                  {"taps": taps, "fraction": float(bad.mean())},
                  "raise the Lanczos steps: jacobian_steps= in gf.analyze_model, "
                  "--jacobian-steps in analyze.py diagnose, steps= in gf.tap_jacobian_norms")]

