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
# More than a quarter of a layer's units inactive on the whole batch. Healthy
# He-initialized deep ReLU networks already show 10-20% on a batch of 64 at
# init (deep representations correlate across examples, so a unit's sign is
# shared by all of them); a quarter and more is the dying-ReLU pathology.
DEAD_WARN_FRACTION = 0.25
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


def _fraction_finding(values, threshold, code, what, fix) -> list[Finding]:
  """A warning naming the layers whose fraction exceeds ``threshold``."""
  values = np.asarray(values)
  top = np.nanmax(values, initial=0)
  if not top > threshold:
    return []
  return [Finding("warning", code, _layers(values > threshold), what.format(top=top),
                  {"max_fraction": float(top)}, fix)]


def _saturation_and_dead(acts) -> list[Finding]:
  return (_fraction_finding(
              acts["saturation_fraction"], SATURATION_WARN_FRACTION, "saturation",
              "saturated units: up to {top:.0%} of pairs in a flat tail",
              "use Xavier initialization with gain 1 (not larger), normalize inputs, "
              "add LayerNorm, or switch to a non-saturating activation")
          + _fraction_finding(
              acts["dead_fraction"], DEAD_WARN_FRACTION, "dead_units",
              "dead units: up to {top:.0%} of a layer's units never active",
              "use He initialization, smaller learning rates, non-negative biases, or "
              "leaky ReLU / GELU / SiLU"))


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


# The input-output Jacobian's mean squared singular value (chi_1^L in
# mean-field theory) beyond 100 or below 1/100: signals and gradients change
# by that factor between input and output.
JACOBIAN_EXPLODING = 1e2
JACOBIAN_VANISHING = 1e-2
# Measured sigma_w^2 = Var(W) x fan_in more than 25% away from the
# activation's recommended initializer (e.g. Xavier's 1 against He's 2 for
# ReLU): a mismatch compounds per layer, 0.8^30 = 1e-3 at depth 30.
INIT_MISMATCH_FACTOR = 1.25
# From this many hidden layers on, measured trouble suggests normalization or
# residual connections (the seed's checklist, last item).
DEEP_NETWORK = 10
# gamma ||W|| of a recurrent matrix above 1 lets ||dh_T/dh_t|| grow like
# (gamma ||W||)^(T-t) (Pascanu et al. 2013); measured through-time norms above
# 100 (below 1/100) over the sequence are exploding (vanishing).
RNN_BOUND = 1.0


def _jacobian_findings(m1: float | None) -> list[Finding]:
  if m1 is None or not np.isfinite(m1):
    return []
  ev = {"mean_sq_singular_value": float(m1)}
  if m1 > JACOBIAN_EXPLODING:
    return [Finding("warning", "exploding_jacobian", (), f"input-output Jacobian amplifies: "
                    f"mean squared singular value {m1:.2e}", ev,
                    "reduce the weight scale toward the critical sigma_w (gf.theory."
                    "critical_sigma_w), add normalization, clip gradients")]
  if m1 < JACOBIAN_VANISHING:
    return [Finding("warning", "vanishing_jacobian", (), f"input-output Jacobian attenuates: "
                    f"mean squared singular value {m1:.2e}", ev,
                    "increase the weight scale toward criticality (He for ReLU), or add "
                    "residual connections")]
  return []


def init_findings(cfg, params) -> list[Finding]:
  """Measured Var(W) x fan_in of the hidden layers against the activation's
  recommended initializer (skipped with normalization, which removes scale)."""
  from gradflow_jax import _initializers
  if cfg.norm is not None or cfg.depth < 2:
    return []
  rec = _initializers.recommended_init(cfg.activation)
  dense = cfg.hidden_dense_index[1:]
  fi, fo = cfg.width, cfg.width
  target = _initializers.weight_variance(rec.name, rec.gain, fi, fo) * fi
  measured = float(np.mean([np.var(np.asarray(params["layers"][i]["w"])) * fi for i in dense]))
  ratio = measured / target
  if 1 / INIT_MISMATCH_FACTOR <= ratio <= INIT_MISMATCH_FACTOR:
    return []
  return [Finding("warning", "init_mismatch", tuple(range(1, cfg.depth)),
                  f"initialization does not match {cfg.activation}: Var(W) x fan_in = "
                  f"{measured:.3g}, {rec.name} (gain {rec.gain:.3g}) gives {target:.3g}",
                  {"measured_sigma_w2": measured, "target_sigma_w2": target},
                  f"use {rec.name} with gain {rec.gain:.3g} (gf.recommended_init)")]


def architecture_findings(cfg, found: list[Finding]) -> list[Finding]:
  trouble = {"vanishing_gradients", "exploding_gradients", "saturation", "vanishing_jacobian",
             "exploding_jacobian", "signal_collapse"}
  if cfg.depth < DEEP_NETWORK or cfg.norm is not None or cfg.residual:
    return []
  if not any(f.kind in trouble for f in found):
    return []
  return [Finding("info", "deep_without_normalization", (),
                  f"{cfg.depth} hidden layers without normalization or residual connections",
                  {"depth": cfg.depth},
                  "add LayerNorm/BatchNorm or residual connections (MLPConfig(norm=..., "
                  "residual=True))")]


def diagnose(cfg, params, x, y, loss: str = "cross_entropy", stats=None) -> list[Finding]:
  """The seed's debugging checklist on a built-in MLP: statistics, gradients,
  the input-output Jacobian (exact, a few examples), initialization and
  architecture. Returns findings, most severe first.

  ``stats``: the run's :class:`FlowStats` when already measured (they are
  then read, not measured again)."""
  import jax
  from gradflow_jax import _jacobians, _stats
  if stats is None:
    stats = _stats.flow_stats(cfg, params, x, y, loss)
  stats = jax.device_get(stats)
  found = diagnose_stats(stats.activations, stats.gradients)
  if cfg.norm != "batchnorm" and cfg.width <= 512:
    spec = _jacobians.jacobian_spectra(cfg, params, np.asarray(x)[:4], depths=[cfg.depth])
    found += _jacobian_findings(float(np.median(np.asarray(spec.mean_sq_singular_value))))
  found += init_findings(cfg, params)
  found += architecture_findings(cfg, found)
  return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


def _tap_finding(f: Finding, names, idx) -> Finding:
  """A per-layer finding re-addressed to taps: ``layers`` index the model's
  taps, and the message and evidence name them."""
  layers = tuple(int(idx[i]) for i in f.layers if i < len(idx))
  taps = [names[i] for i in layers]
  shown = ", ".join(taps[:4]) + (f" and {len(taps) - 4} more" if len(taps) > 4 else "")
  message = f.message.replace("hidden layer", "tap").replace("layer 0", "the first tap")
  return f._replace(layers=layers, message=f"{message} (at {shown})" if taps else message,
                    evidence={**f.evidence, "taps": taps})


def diagnose_model(stats, jacobians=None) -> list[Finding]:
  """Findings for any probed model from measurements already made (host-only:
  it never runs the model).

  Args:
    stats: :class:`ModelFlowStats` (host or device arrays).
    jacobians: optional :class:`TapJacobians`; unconverged norms are reported
      as such, never used as measurements.

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
    first = int(np.argmax(nonfinite > 0))
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
                  "raise steps in gf.tap_jacobian_norms")]


def diagnose_rnn(cfg, params, xs) -> list[Finding]:
  """Findings for a vanilla RNN: the Pascanu bound and measured norms through time."""
  import jax
  from gradflow_jax import _rnn
  r = jax.device_get(_rnn.rnn_through_time(cfg, params, xs))
  found = []
  gamma_w = cfg.act.max_derivative * float(r.weight_norm)
  whole = float(np.median(np.asarray(r.jacobian_norm)[:, 0]))
  ev = {"gamma_times_weight_norm": gamma_w, "median_dhT_dh0": whole, "steps": int(xs.shape[0])}
  if whole > EXPLODING_RATIO or gamma_w > RNN_BOUND:
    found.append(Finding("warning", "exploding_gradients_rnn", (),
                         f"recurrent gradients can explode: gamma ||W|| = {gamma_w:.3g} > 1 "
                         f"(||dh_T/dh_0|| = {whole:.2e} over {xs.shape[0]} steps)", ev,
                         "rescale W to spectral norm <= 1/gamma (orthogonal init), clip "
                         "gradients with optax.clip_by_global_norm"))
  if whole < VANISHING_RATIO:
    found.append(Finding("warning", "vanishing_gradients_rnn", (),
                         f"gradients vanish through time: ||dh_T/dh_0|| = {whole:.2e} over "
                         f"{xs.shape[0]} steps", ev,
                         "orthogonal recurrent init with spectral norm near 1, gated units "
                         "(LSTM/GRU), or shorter truncation"))
  return found
