"""The monitored step's result: :class:`FlowStep` (a few stacked arrays and
their views) and in-jit histograms with fixed bins."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax import _display
from gradflow_jax.measure._model_stats import ModelFlowStats
from gradflow_jax.measure._rows import ActivationStats


# Signed, log-spaced bin edges for in-jit histograms: 0, then +-10^k for k in
# [-10, 4] at 4 bins per decade. They cover activations and gradients of any
# usual scale with one fixed set of bins (the outer bins take everything
# beyond +-10^4; |v| < 1e-10 falls in the two bins beside 0).
_DECADES = np.arange(-10.0, 4.0 + 1e-9, 0.25)
HISTOGRAM_EDGES = np.concatenate([-10.0 ** _DECADES[::-1], [0.0], 10.0 ** _DECADES])


@dataclasses.dataclass(frozen=True)
class Histogram:
  """Counts of a tensor's finite entries in ``HISTOGRAM_EDGES`` bins (the
  first and last bin also take everything beyond the outermost edges), with
  the sums TensorBoard's histogram summary needs."""
  counts: jax.Array
  min: jax.Array
  max: jax.Array
  sum: jax.Array
  sum_squares: jax.Array


jax.tree_util.register_dataclass(Histogram, data_fields=[f.name for f in dataclasses.fields(
    Histogram)], meta_fields=[])


def histogram(x) -> Histogram:
  """The :class:`Histogram` of one tensor, traced (fixed bins: no host sync)."""
  v = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # not flattened: see _rows._per_row
  finite = jnp.isfinite(v)
  edges = jnp.asarray(HISTOGRAM_EDGES, v.dtype)
  clipped = jnp.clip(v, edges[0], edges[-1])
  index = jnp.clip(jnp.searchsorted(edges, clipped, side="right") - 1, 0, edges.size - 2)
  counts = jnp.zeros(edges.size - 1, jnp.int32).at[index].add(finite.astype(jnp.int32))
  zero = jnp.where(finite, v, 0)
  return Histogram(counts, jnp.min(jnp.where(finite, v, jnp.inf)),
                   jnp.max(jnp.where(finite, v, -jnp.inf)), jnp.sum(zero), jnp.sum(zero * zero))


def _histogram_keys(names) -> list[str]:
  """``act/NAME`` for every tap, then ``grad/NAME``: a FlowStep's histograms in
  stacking order."""
  return [f"{kind}/{n}" for kind in ("act", "grad") for n in names]


_PACKED_FIELDS = ActivationStats._fields[:7] + ActivationStats._fields[8:] + ("tap_grad_norm",)


@dataclasses.dataclass(frozen=True)
class FlowStep:
  """What one monitored step measured: the statistics of
  :class:`ModelFlowStats` (``flow_stats`` gives them as one), packed, with
  whether the step was measured and its histograms. Per-tap arrays have
  shape (n_taps,), in the order the loss recorded its taps (``names``).

  Attributes:
    names, roles, activation_names: per tap (static): its name, its role
      (``"pre"``: a layer's output, ``"post"``: a layer's input, ``"tap"``) and
      the activation known to follow it, or None.
    activations: :class:`ActivationStats` of each tapped tensor (mean, std,
      min, max, saturation/dead/zero fractions, non-finite count). Saturation
      and dead units use the activation's tests where it is known; otherwise
      saturation is NaN and a dead unit is one exactly 0 on every example.
    tap_grad_norm: ||dL/d tap||, the backward signal reaching each tap.
    param_grad_norms: like the parameters, ||dL/dp|| per leaf.
    global_norm: ``optax.tree.norm`` of the gradients (before any clipping).
    loss: the loss value.
    measured: False on a step that ``every`` skipped (then every statistic
      above except ``loss`` is NaN) or that ``measure=False`` skipped (then
      they are None: the step returns nothing extra).
    histograms: ``{"act/NAME": Histogram, "grad/NAME": Histogram}`` of each
      tap's values and of dL/d tap, when asked for (``histograms=True``), else
      ``{}``.

  As a pytree a FlowStep is a few stacked arrays (``stats``: the per-tap
  floats, one row per field; ``nonfinite``; ``norms``: per-leaf then global
  gradient norm; ``loss``; ``measured``; ``stacked_histograms``), not one leaf per
  statistic: every array a jitted step returns costs the host a buffer and a
  Python object per call (~3-15 us each, measured under ``jax.jit`` and
  ``nnx.jit``), which for dozens of statistics is several percent of a small
  model's step. The attributes above are views of them (traced inside jit,
  NumPy after ``jax.device_get``). A FlowStep of a vmapped step (over
  seeds, say) has leading axes on every array, and the views keep them.
  """
  names: tuple[str, ...]
  roles: tuple[str, ...]
  activation_names: tuple
  stats: Any  # (len(_PACKED_FIELDS), n_taps) floats
  nonfinite: Any  # (n_taps,) int32
  norms: Any  # (n_leaves + 1,): ||dL/dp|| per leaf, then the global norm
  loss: Any
  measured: Any
  stacked_histograms: Any = None  # Histogram with a leading (2 n_taps,) axis, or None
  param_treedef: Any = None

  @classmethod
  def pack(cls, stats: ModelFlowStats, measured, histograms=None) -> "FlowStep":
    """The FlowStep holding ``stats`` (arrays or tracers; their statistics
    None where the step returned none: ``measure=False``)."""
    names, roles, activation_names, activations, tap_grad_norm, param_grad_norms, \
        global_norm, loss = stats
    leaves, treedef = jax.tree.flatten(param_grad_norms)
    if activations is None:
      return cls(names, roles, activation_names, None, None, None, loss, measured, None, treedef)
    columns = [getattr(activations, f) for f in _PACKED_FIELDS[:-1]] + [tap_grad_norm]
    dtype = jnp.result_type(*columns)
    packed = jnp.stack([c.astype(dtype) for c in columns])
    norms = jnp.stack([jnp.asarray(v, jnp.result_type(global_norm)) for v in leaves]
                      + [global_norm])
    hist = None
    if histograms:
      hist = jax.tree.map(lambda *h: jnp.stack(h),
                          *[histograms[k] for k in _histogram_keys(names)])
    return cls(names, roles, activation_names, packed, activations.nonfinite, norms, loss,
               measured, hist, treedef)

  @property
  def flow_stats(self) -> ModelFlowStats | None:
    """The statistics as :class:`ModelFlowStats`, the type
    ``gf.model_flow_stats`` returns (None on a ``measure=False`` step)."""
    if self.stats is None:
      return None
    return ModelFlowStats(self.names, self.roles, self.activation_names, self.activations,
                          self.tap_grad_norm, self.param_grad_norms, self.global_norm, self.loss)

  def _column(self, field):
    # indexed from the right: a FlowStep of a vmapped step has leading axes
    return None if self.stats is None else self.stats[..., _PACKED_FIELDS.index(field), :]

  @property
  def activations(self) -> ActivationStats | None:
    if self.stats is None:
      return None
    return ActivationStats(**{f: (self.nonfinite if f == "nonfinite" else self._column(f))
                              for f in ActivationStats._fields})

  @property
  def tap_grad_norm(self):
    return self._column("tap_grad_norm")

  @property
  def param_grad_norms(self):
    if self.norms is None:
      return None
    return jax.tree.unflatten(self.param_treedef,
                              [self.norms[..., k] for k in range(self.param_treedef.num_leaves)])

  @property
  def global_norm(self):
    return None if self.norms is None else self.norms[..., -1]

  @property
  def histograms(self) -> dict:
    if self.stacked_histograms is None:
      return {}
    # the tap axis: first of counts' two, or of the others' one, after any
    # leading (vmapped) axes
    pick = lambda h, i: Histogram(h.counts[..., i, :], *(getattr(h, f)[..., i] for f in (
        "min", "max", "sum", "sum_squares")))
    return {k: pick(self.stacked_histograms, i)
            for i, k in enumerate(_histogram_keys(self.names))}

  def _repr_html_(self) -> str | None:
    return _display.html("flow_step", self)  # drawn by _writers.flow_step_html


jax.tree_util.register_dataclass(
    FlowStep, data_fields=["stats", "nonfinite", "norms", "loss", "measured",
                           "stacked_histograms"],
    meta_fields=["names", "roles", "activation_names", "param_treedef"])
