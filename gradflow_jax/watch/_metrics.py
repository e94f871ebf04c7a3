"""The flat ``{name: float}`` dicts a step's numbers leave through (host code):
:func:`flat_metrics` for the ``flow`` tier (a
:class:`~gradflow_jax.watch._flow_step.FlowStep`), :func:`tier_metrics` for the
``norms``, ``optimizer`` and ``spectra`` tiers, named per parameter leaf by
:func:`leaf_names`."""

from __future__ import annotations

import math

import jax
import numpy as np

from gradflow_jax.models import _activations
from gradflow_jax.watch._flow_step import FlowStep, Histogram

_ACT_FIELDS = (("mean", "mean"), ("std", "std"), ("min", "min"), ("max", "max"),
               ("saturated", "saturation_fraction"), ("dead", "dead_fraction"),
               ("zero", "zero_fraction"), ("nonfinite", "nonfinite"),
               ("always_active", "always_active_fraction"))


def _has_field(label: str, activation: str | None) -> bool:
  """Saturation needs a known activation; always-active also needs one with
  an inactive region (ReLU-like), else it is NaN on every step."""
  if label not in ("saturated", "always_active"):
    return True
  if activation is None:
    return False
  if label == "saturated" or activation == "prelu":  # prelu: tested on its slope
    return True
  lo, hi = _activations.get_activation(activation).inactive_bounds
  return not (math.isinf(lo) and math.isinf(hi))


def _is_variable(x) -> bool:
  from flax import nnx
  return isinstance(x, nnx.Variable)


def _named_values(tree) -> list[tuple[str, object]]:
  """(``"Dense_0/kernel"``-style name, value) of a pytree's leaves in leaf
  order; an NNX ``Variable`` is one leaf named by its path (no ``/value``)."""
  paths = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)[0]
  return [(jax.tree_util.keystr(p, simple=True, separator="/") or "value",
           v[...] if _is_variable(v) else v) for p, v in paths]


def leaf_names(tree) -> list[str]:
  """``"Dense_0/kernel"``-style names of a pytree's leaves, in leaf order."""
  return [n for n, _ in _named_values(tree)]


def _named_leaves(prefix: str, tree) -> dict[str, float]:
  return {f"{prefix}/{n}": float(v) for n, v in _named_values(tree)}


def flat_metrics(flow: FlowStep, update_ratios=None, prefix: str = "") -> dict[str, float]:
  """One flat ``{name: float}`` dict of a step, for any logger.

  Names: ``loss``; ``grad_norm/global`` and ``grad_norm/<param path>``
  (||dL/dp||); ``tap_grad_norm/<tap>`` (||dL/d tap||); ``act/<stat>/<tap>``
  for stat in mean, std, min, max, saturated, dead, zero (fractions) and
  nonfinite (a count); ``update_ratio/<param path>`` when ``update_ratios``
  (from :func:`~gradflow_jax.update_ratios`) is given. A skipped step
  (``every``) has only ``loss`` and the update ratios. Saturation is left out
  for taps with no known activation. Non-finite values stay NaN/Inf.
  """
  flow = jax.device_get(flow)
  out = {"loss": float(flow.loss)}
  if bool(flow.measured):
    out["grad_norm/global"] = float(flow.global_norm)
    out.update(_named_leaves("grad_norm", flow.param_grad_norms))
    acts, tap_grad_norm = flow.activations, flow.tap_grad_norm.tolist()
    columns = {field: getattr(acts, field).tolist() for _, field in _ACT_FIELDS}
    for i, name in enumerate(flow.names):
      out[f"tap_grad_norm/{name}"] = float(tap_grad_norm[i])
      for label, field in _ACT_FIELDS:
        if not _has_field(label, flow.activation_names[i]):
          continue
        out[f"act/{label}/{name}"] = float(columns[field][i])
  if update_ratios is not None:
    out.update(_named_leaves("update_ratio", jax.device_get(update_ratios)))
  return {prefix + k: v for k, v in out.items()}


def tier_metrics(params_or_names, *, norms=None, health=None, spectra=None,
                 stable_rank=None, clip: float | None = None,
                 spectra_tol: float = 1e-3, curvature=None, noise=None) -> dict[str, float]:
  """The flat ``{name: float}`` dict of the other tiers of a step (host code),
  per parameter leaf named as in :func:`flat_metrics`.

  ``norms`` (a :class:`~gradflow_jax.watch.StepNorms`): ``loss``,
  ``grad_norm/global`` (before clipping; ``grad_norm/global_clipped`` =
  min(it, ``clip``) when the chain clips at ``clip``), ``grad_norm/<leaf>``,
  ``param_norm/<leaf>``, ``update_norm/<leaf>``, ``update_ratio/<leaf>``,
  ``nonfinite/grad/<leaf>`` and ``nonfinite/param/<leaf>`` (counts);
  ``health`` (:class:`~gradflow_jax.watch.AdamHealth`): ``adam/<field>/<leaf>``;
  ``spectra`` (:class:`~gradflow_jax.watch.SpectraState`): ``sigma_max/<leaf>``
  for weight matrices whose estimate has settled (moved by at most
  ``spectra_tol``, relative, in its last update: ``WeightSpectra.tol``), and
  ``stable_rank/<leaf>`` for those when ``stable_rank`` (from
  :func:`~gradflow_jax.watch.stable_ranks`) is given; ``spectra/unsettled``
  counts the matrices left out.
  ``curvature`` (:class:`~gradflow_jax.watch.CurvatureState`, logged on a
  step it measured): ``sharpness`` and ``sharpness/preconditioned`` (Adam)
  where converged, ``sharpness/threshold`` (2 / lr, or Adam's 38 / lr),
  ``sharpness/ratio`` (the optimizer's sharpness over it, when converged),
  ``sharpness/block/<leaf>`` (each leaf's own, where converged) and
  ``sharpness/unconverged`` (how many of these were left out);
  ``noise`` (:class:`~gradflow_jax.watch.NoiseState`): ``noise/b_simple``
  and ``noise/b_simple_stderr`` (the window's), ``noise/b_simple/<leaf>``,
  each only where positive (``noise/unresolved`` counts the others).
  """
  names = (list(params_or_names) if isinstance(params_or_names, (list, tuple))
           and all(isinstance(n, str) for n in params_or_names) else leaf_names(params_or_names))
  norms, health, spectra, stable_rank = jax.device_get((norms, health, spectra, stable_rank))
  out = {}

  def per_leaf(prefix, values, keep=None):
    values = np.asarray(values, float).reshape(-1)
    if len(values) != len(names):
      raise ValueError(f"expected one {prefix} per parameter leaf ({len(names)}), got "
                       f"{len(values)}")
    out.update({f"{prefix}/{n}": float(v) for n, v in zip(names, values)
                if keep is None or keep(v)})
  if norms is not None:
    out["loss"] = float(norms.loss)
    g = float(np.sqrt(np.sum(np.asarray(norms.grad_norm, float) ** 2)))
    out["grad_norm/global"] = g
    if clip is not None:
      out["grad_norm/global_clipped"] = min(g, float(clip))
    for field in ("grad_norm", "param_norm", "update_norm"):
      per_leaf(field, getattr(norms, field))
    with np.errstate(divide="ignore", invalid="ignore"):
      per_leaf("update_ratio", np.asarray(norms.update_norm, float)
               / np.asarray(norms.param_norm, float))
    per_leaf("nonfinite/grad", norms.grad_nonfinite)
    per_leaf("nonfinite/param", norms.param_nonfinite)
  if health is not None:
    for field, values in health._asdict().items():
      per_leaf(f"adam/{field}", values)
  if spectra is not None:
    matrix = ~np.isnan(np.asarray(spectra.sigma, float))
    settled = matrix & (np.asarray(spectra.change, float) <= spectra_tol)
    per_leaf("sigma_max", np.where(settled, spectra.sigma, np.nan), keep=lambda v: not np.isnan(v))
    if stable_rank is not None:
      per_leaf("stable_rank", np.where(settled, stable_rank, np.nan),
               keep=lambda v: not np.isnan(v))
    out["spectra/unsettled"] = float(np.sum(matrix & ~settled))
  if curvature is not None and bool(curvature.measured):
    _curvature_metrics(out, curvature, per_leaf)
  if noise is not None and bool(noise.measured):
    # a ratio <= 0 (the window's |G|^2 estimate at or below 0: noise swamps
    # the signal) resolves nothing: left out, counted in noise/unresolved
    resolved = lambda v: np.isfinite(v) and v > 0
    if resolved(float(noise.b_simple)):
      out["noise/b_simple"] = float(noise.b_simple)
      out["noise/b_simple_stderr"] = float(noise.stderr)
    leaves = np.asarray(noise.leaf_b_simple, float)
    per_leaf("noise/b_simple", leaves, keep=resolved)
    out["noise/unresolved"] = float(sum(not resolved(v) for v in
                                        [float(noise.b_simple), *leaves]))
  return out


def _curvature_metrics(out: dict, c, per_leaf) -> None:
  missed = 0
  for key, value, ok in (("sharpness", c.sharpness, c.converged),
                         ("sharpness/preconditioned", c.preconditioned,
                          c.preconditioned_converged)):
    if np.isnan(float(value)):
      continue
    if bool(ok):
      out[key] = float(value)
    else:
      missed += 1
  out["sharpness/threshold"] = float(c.threshold)
  adam = not np.isnan(float(c.preconditioned))
  if bool(c.preconditioned_converged if adam else c.converged):
    out["sharpness/ratio"] = float(c.ratio)
  blocks = np.asarray(c.blocks, float)
  if not np.isnan(blocks).all():
    ok = np.asarray(c.blocks_converged, bool)
    per_leaf("sharpness/block", np.where(ok, blocks, np.nan), keep=lambda v: not np.isnan(v))
    missed += int(np.sum(~ok))
  out["sharpness/unconverged"] = float(missed)


def histograms(flow: FlowStep) -> dict[str, Histogram]:
  """The step's histograms on the host (``{}`` when none or skipped)."""
  if not flow.histograms or not bool(flow.measured):
    return {}
  return {k: jax.device_get(h) for k, h in flow.histograms.items()}
