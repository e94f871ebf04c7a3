"""Findings for the built-in MLP and RNN: initialization against mean-field
criticality, architecture, and the RNN's gradients through time. Host-only,
on measurements it is given."""

from __future__ import annotations

import functools

import numpy as np

from gradflow_jax.diagnosis._diagnose import (_blame, _jacobian_findings, diagnose_stats,
                                              EXPLODING_RATIO, Finding, JACOBIAN_EXPLODING,
                                              JACOBIAN_VANISHING, SEVERITIES, VANISHING_RATIO)

# The initialization check asks the theory (Poole et al. 2016; Schoenholz et
# al. 2017): at the measured sigma_w^2 = Var(W) x fan_in and sigma_b, does
# the predicted mean squared singular value of the input-output Jacobian (the
# product of the per-layer chi_1 along the variance's path through this
# depth) leave [1/100, 100]? The recommended torch gain is one
# option, shown with its own chi_1; the target is criticality (chi_1 = 1).
# From this many hidden layers on, measured trouble suggests normalization or
# residual connections (the seed's checklist, last item).
DEEP_NETWORK = 10
# gamma ||W|| of a recurrent matrix above 1 lets ||dh_T/dh_t|| grow like
# (gamma ||W||)^(T-t) (Pascanu et al. 2013); measured through-time norms above
# 100 (below 1/100) over the sequence are exploding (vanishing).
RNN_BOUND = 1.0


@functools.lru_cache(maxsize=256)
def _critical(activation: str, sigma_b: float, kw: tuple):
  from gradflow_jax import theory
  try:
    return theory.critical_sigma_w(activation, sigma_b, **dict(kw)), ""
  except ValueError as e:
    return None, str(e)


def criticality_finding(activation: str, sigma_w2: float, sigma_b: float, depth: int,
                        act_kwargs: dict | None = None) -> list[Finding]:
  """A warning when mean-field theory puts a plain deep network (this
  activation, sigma_w^2, sigma_b, depth) far from criticality: the predicted
  mean squared singular value of its input-output Jacobian outside
  [JACOBIAN_VANISHING, JACOBIAN_EXPLODING]. The prediction follows the
  pre-activation variance from unit-variance inputs (q_1 = sigma_w^2 +
  sigma_b^2) through the network's own depth
  (``theory.mean_sq_singular_value_by_depth``), not chi_1(q*)^depth: where
  q* is 0 (GELU and SiLU under He) the variance decays slowly and
  chi_1(q*)^10 = 1e-3 predicted 40-500x less than the gradients measured.
  The fix is the critical sigma_w, with the recommended initializer's chi_1
  for context."""
  from gradflow_jax import theory
  from gradflow_jax.models import _initializers
  kw = dict(act_kwargs or {})
  if not (np.isfinite(sigma_w2) and sigma_w2 > 0 and np.isfinite(sigma_b)):
    return []
  sw = float(np.sqrt(sigma_w2))
  chi = theory.chi1(activation, sw, sigma_b, **kw)
  growth = float(theory.mean_sq_singular_value_by_depth(
      activation, sw, sigma_b, depth, q0=sigma_w2 + sigma_b**2, **kw)[-1])
  growth = growth if np.isfinite(growth) else np.inf
  if JACOBIAN_VANISHING <= growth <= JACOBIAN_EXPLODING:
    return []
  crit, why = _critical(activation, float(sigma_b), tuple(sorted(kw.items())))
  rec = _initializers.recommended_init(activation, **kw)
  rec_sw = float(np.sqrt(_initializers.weight_variance(rec.name, rec.gain, 100, 100) * 100))
  rec_chi = theory.chi1(activation, rec_sw, sigma_b, **kw)
  direction = "decrease" if growth > 1 else "increase"
  ev = {"sigma_w2": sigma_w2, "sigma_b": float(sigma_b), "chi1": chi,
        "predicted_jacobian_mean_sq": growth,
        "critical_sigma_w": crit, "weight_scale": direction}
  context = f"({rec.name} gain {rec.gain:.3g} gives chi_1 = {rec_chi:.3g})"
  if crit is not None:
    fix = (f"set sigma_w to {crit:.3g}, critical for {activation} with sigma_b = "
           f"{sigma_b:.3g} (chi_1 = 1) {context}")
  else:
    fix = (f"{direction} the weight scale; no critical sigma_w exists for {activation} at "
           f"sigma_b = {sigma_b:.3g} ({why.split(': ', 1)[-1]}); add normalization")
  return [Finding("warning", "init_mismatch", (),
                  f"initialization far from criticality for {activation} at depth {depth}: "
                  f"sigma_w^2 = {sigma_w2:.3g} predicts an input-output Jacobian mean squared "
                  f"singular value of {growth:.2e} from unit-variance inputs (chi_1 = "
                  f"{chi:.3g} per layer at the fixed point)", ev, fix)]


def init_findings(cfg, params) -> list[Finding]:
  """Measured sigma_w^2 = Var(W) x fan_in and sigma_b of the hidden layers
  against criticality (skipped with normalization or residual connections,
  where the plain-network theory does not apply)."""
  if cfg.norm is not None or cfg.residual or cfg.depth < 2:
    return []
  dense = cfg.hidden_dense_index[1:]
  layers = [params["layers"][i] for i in dense]
  sw2 = float(np.mean([np.var(np.asarray(l["w"], np.float64)) * cfg.width for l in layers]))
  sb = float(np.sqrt(np.mean([np.mean(np.square(np.asarray(l["b"], np.float64)))
                              for l in layers])))
  kw = {"leaky_relu": {"slope": cfg.leaky_slope}, "elu": {"alpha": cfg.elu_alpha},
        "prelu": {"prelu_init": cfg.prelu_init}}.get(cfg.act.name, {})
  return criticality_finding(cfg.act.name, sw2, sb, cfg.depth, kw)


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


def mlp_findings(cfg, params, stats, causes=(), m1: float | None = None) -> list[Finding]:
  """The seed's debugging checklist on a built-in MLP, from measurements it is
  given: ``stats`` (host :class:`FlowStats`), ``causes`` (findings of the
  input data, :func:`input_findings`), ``m1`` (the median mean squared
  singular value of the input-output Jacobian, or None) and the
  configuration and weights (initialization, architecture). Most severe first."""
  found = diagnose_stats(stats.activations, stats.gradients)
  if causes:  # the rest would diagnose the symptoms of bad input
    return _blame([f for f in found if f.kind.startswith("nonfinite")], list(causes))
  if m1 is not None:
    found += _jacobian_findings(m1)
  found += init_findings(cfg, params)
  found += architecture_findings(cfg, found)
  return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


def rnn_findings(cfg, through_time) -> list[Finding]:
  """Findings for a vanilla RNN from ``through_time`` (host
  :func:`rnn_through_time` of it): the Pascanu bound and the measured norms."""
  r = through_time
  found = []
  gamma_w = cfg.act.max_derivative * float(r.weight_norm)
  whole = float(np.median(np.asarray(r.jacobian_norm)[:, 0]))
  steps = int(np.asarray(r.jacobian_norm).shape[-1])
  ev = {"gamma_times_weight_norm": gamma_w, "median_dhT_dh0": whole, "steps": steps}
  # the Pascanu condition gamma ||W|| > 1 is necessary for exploding, not
  # sufficient: the verdict is the measured norm, the bound its context
  bound = (f"the bound gamma ||W|| = {gamma_w:.3g} {'>' if gamma_w > RNN_BOUND else '<='} 1 "
           + ("allows growth (necessary, not sufficient)" if gamma_w > RNN_BOUND
              else "rules growth out"))
  if whole > EXPLODING_RATIO:
    found.append(Finding("warning", "exploding_gradients_rnn", (),
                         f"gradients explode through time: ||dh_T/dh_0|| = {whole:.2e} over "
                         f"{steps} steps; {bound}", {**ev, "weight_scale": "decrease"},
                         "rescale W to spectral norm <= 1/gamma (orthogonal init), clip "
                         "gradients with optax.clip_by_global_norm"))
  elif whole < VANISHING_RATIO:
    found.append(Finding("warning", "vanishing_gradients_rnn", (),
                         f"gradients vanish through time: ||dh_T/dh_0|| = {whole:.2e} over "
                         f"{steps} steps; {bound}", ev,
                         "orthogonal recurrent init with spectral norm near 1, gated units "
                         "(LSTM/GRU), or shorter truncation"))
  elif gamma_w > RNN_BOUND:
    found.append(Finding("info", "rnn_bound_above_one", (),
                         f"||dh_T/dh_0|| = {whole:.2e} over {steps} steps is in range, but "
                         f"{bound}: longer sequences or training may make it explode", ev,
                         "watch ||dh_T/dh_t|| over training; clip gradients with "
                         "optax.clip_by_global_norm"))
  return found
