"""Measure a model once, then diagnose those measurements: what the CLI, the
report and results.json all show, so they agree."""

from __future__ import annotations

from typing import NamedTuple

import jax

from gradflow_jax import _display
from gradflow_jax.capture import _probed as _probe
from gradflow_jax.diagnosis import _builtin, _diagnose
from gradflow_jax.measure import _model_stats, _tap_jacobians
from gradflow_jax.models import _activations


class ModelAnalysis(NamedTuple):
  """One model on one batch (host arrays).

  Attributes:
    model: the :class:`ProbedModel` measured, with the activations used.
    stats: :class:`ModelFlowStats`.
    jacobians: :class:`TapJacobians` (local Jacobian norms), or ``None``.
    findings: the diagnosis of exactly these measurements.
    input_jacobian: (target tap, (batch,) mean squared singular value of
      d target / d input), or ``(None, None)``
      (:func:`input_output_mean_sq_singular_value`).
  """
  model: _probe.ProbedModel
  stats: object
  jacobians: object
  findings: list
  input_jacobian: tuple = (None, None)

  def as_dict(self) -> dict:
    """What ``analyze.py diagnose`` writes to results.json: the statistics
    (:meth:`ModelFlowStats.as_dict`), the tap Jacobians, the input-output
    Jacobian and the findings."""
    target, msq = self.input_jacobian
    jac = self.jacobians.as_dict() if self.jacobians is not None else None
    stats = self.stats.as_dict()
    return {**{k: stats[k] for k in ("taps", "roles", "activation_names", "activation_stats",
                                     "tap_grad_norm")},
            "tap_jacobian": jac,
            "input_jacobian": {"target": target, "mean_sq_singular_value": msq},
            "global_norm": stats["global_norm"], "loss": stats["loss"],
            "findings": [f._asdict() for f in self.findings]}

  def __repr__(self) -> str:
    """One line: the model, its size, the loss and the findings by kind (the
    statistics themselves are in ``.stats`` and ``.as_dict()``)."""
    taps = len(self.stats.names)
    found = ", ".join(f"{f.kind} ({f.severity})" for f in self.findings) or "none"
    return (f"ModelAnalysis(model={self.model!r}, taps={taps}, loss={float(self.stats.loss):.4g}, "
            f"global_norm={float(self.stats.global_norm):.4g}, findings=[{found}])")

  def _repr_html_(self) -> str | None:
    """The findings (as report.html shows them) and the taps table, for
    notebooks (drawn by ``render/_report.analysis_html``)."""
    return _display.html("model_analysis", self)


def analyze_model(model: _probe.ProbedModel, x, y, loss="cross_entropy",
                  activations: dict[str, str] | None = None, infer: bool = True,
                  jacobians: bool = True,
                  jacobian_steps: int = _tap_jacobians.LANCZOS_STEPS) -> ModelAnalysis:
  """Statistics, local Jacobian norms and findings of ``model`` on (x, y).

  Args:
    model: a :class:`ProbedModel` (``gf.from_linen``, ``gf.from_nnx``,
      ``gf.probed``, ``gf.mlp_model``) or anything :func:`as_probed` takes.
    x, y: a batch and its targets.
    loss: ``"cross_entropy"``, ``"mse"`` or ``loss(output, y)``.
    activations: {tap: activation} for taps the model cannot tell
      (overrides what is inferred).
    infer: read the activation after each layer from the taps
      (:func:`infer_activations`).
    jacobians: also measure :func:`tap_jacobian_norms` (per example). The
      input-output Jacobian estimate (8 jvps) is always measured.
    jacobian_steps: Lanczos steps per local Jacobian (``steps`` of
      :func:`tap_jacobian_norms`); raise it where norms did not converge.
  """
  for name in (activations or {}).values():
    _activations.get_activation(name)
  if infer:
    model = model.with_activations(_model_stats.infer_activations(model, x))
  if activations:
    model = model.with_activations(activations)
  stats = jax.device_get(_model_stats.model_flow_stats(model, x, y, loss))
  jac = (jax.device_get(_tap_jacobians.tap_jacobian_norms(model, x, jacobian_steps))
         if jacobians else None)
  n_classes = None
  if loss == "cross_entropy":
    out = jax.eval_shape(lambda p: model.forward(p, x, None)[0], model.params)
    n_classes = int(out.shape[-1]) if getattr(out, "ndim", 0) else None
  causes = _diagnose.input_findings(x, y, model.params, n_classes)
  target, msq = _tap_jacobians.input_output_mean_sq_singular_value(model, x)  # 8 jvps
  io = (target, None if msq is None else jax.device_get(msq))
  findings = _diagnose.diagnose_model(stats, jac, causes, io[1])
  return ModelAnalysis(model, stats, jac, findings, io)


def diagnose(cfg, params, x, y, loss: str = "cross_entropy", stats=None) -> list:
  """The seed's debugging checklist on a built-in MLP: measures the
  statistics, gradients and input-output Jacobian (exact, a few examples),
  then reads them (``_builtin.mlp_findings``). Returns findings, most
  severe first.

  ``stats``: the run's :class:`FlowStats` when already measured (they are
  then read, not measured again)."""
  import numpy as np
  from gradflow_jax.measure import _jacobians, _stats
  if stats is None:
    stats = _stats.flow_stats(cfg, params, x, y, loss)
  stats = jax.device_get(stats)
  causes = _diagnose.input_findings(x, y if loss == "cross_entropy" else None, params,
                                    cfg.out_dim)
  m1 = None
  if not causes and cfg.norm != "batchnorm" and cfg.width <= 512:
    spec = _jacobians.jacobian_spectra(cfg, params, np.asarray(x)[:4], depths=[cfg.depth])
    m1 = float(np.median(np.asarray(spec.mean_sq_singular_value)))
  return _builtin.mlp_findings(cfg, params, stats, causes, m1)


def diagnose_rnn(cfg, params, xs) -> list:
  """Findings for a vanilla RNN: measures its gradients through time
  (:func:`rnn_through_time`), then reads them (``_builtin.rnn_findings``)."""
  from gradflow_jax.measure import _through_time
  return _builtin.rnn_findings(cfg, jax.device_get(_through_time.rnn_through_time(cfg, params, xs)))
