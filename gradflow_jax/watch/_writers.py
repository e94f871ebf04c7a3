"""Where a monitored step's numbers go (host code: call it outside jit).

:func:`flat_metrics` turns a :class:`~gradflow_jax.watch._flow_step.FlowStep` into a
flat ``{name: float}`` dict any logger takes (``wandb.log(metrics,
step=step)``). :func:`log_step` sends it to a writer: :class:`JsonlWriter`
(always available), :class:`TensorBoardWriter` (``pip install
gradflow_jax[tensorboard]``), or any object with CLU's
``write_scalars(step, scalars)`` (CLU ``metric_writers``, or a two-line
adapter for wandb).
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import math
import os
from typing import Any, Mapping, Protocol

import jax
import numpy as np

from gradflow_jax import _display, _io
from gradflow_jax.models import _activations
from gradflow_jax.watch._flow_step import FlowStep, Histogram, HISTOGRAM_EDGES

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


class MetricWriter(Protocol):
  """What :func:`log_step` needs: CLU's ``MetricWriter.write_scalars``.
  A writer that also has ``write_histogram_counts(step, name, Histogram)``
  gets the in-jit histograms."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    ...


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


def histograms(flow: FlowStep) -> dict[str, Histogram]:
  """The step's histograms on the host (``{}`` when none or skipped)."""
  if not flow.histograms or not bool(flow.measured):
    return {}
  return {k: jax.device_get(h) for k, h in flow.histograms.items()}


def log_step(writer: MetricWriter, step: int, flow: FlowStep, update_ratios=None) -> dict:
  """Writes a step's scalars (and histograms, where the writer takes them);
  returns the scalars."""
  return _write_step([writer], step, flow, update_ratios)


def _write_step(writers, step: int, flow: FlowStep, update_ratios=None) -> dict:
  """One step to every writer, its numbers read from the device once."""
  scalars = flat_metrics(flow, update_ratios)
  hists = None
  for writer in writers:
    writer.write_scalars(int(step), scalars)
    if hasattr(writer, "write_histogram_counts"):
      hists = histograms(flow) if hists is None else hists
      for name, h in hists.items():
        writer.write_histogram_counts(int(step), name, h)
  return scalars


class StepLogger:
  """:func:`log_step` one logged step late, so the host never waits for the
  step it has just dispatched.

  ``log_step`` reads the step's numbers, which blocks the host until that
  step has run; the device then idles until the host has written them and
  dispatched the next step. ``logger(step, flow, ratios)`` instead starts
  the copy to the host and writes the step logged before it (finished long
  ago), so logging overlaps with training. ``flush()`` (or leaving the
  ``with`` block, or ``close()``) writes the last one.

  Example:
    >>> with gf.StepLogger(gf.watch.JsonlWriter("runs/log.jsonl")) as log:
    ...   for step in range(steps):
    ...     params, opt_state, flow, ratios = train_step(params, opt_state, x, y, step)
    ...     if step % 10 == 0:
    ...       log(step, flow, ratios)
  """

  def __init__(self, *writers: MetricWriter):
    self.writers = writers
    self._pending = None
    self.last: tuple[int, dict] | None = None  # (step, scalars) last written

  def __call__(self, step: int, flow: FlowStep, update_ratios=None) -> None:
    for leaf in jax.tree.leaves((flow, update_ratios)):
      if hasattr(leaf, "copy_to_host_async"):
        leaf.copy_to_host_async()
    self.flush()
    self._pending = (int(step), flow, update_ratios)

  def flush(self) -> None:
    """Writes the step held back, if any."""
    if self._pending is None:
      return
    step, flow, ratios = self._pending
    self._pending = None
    self.last = (step, _write_step(self.writers, step, flow, ratios))

  def close(self) -> None:
    """Writes the step held back and closes the writers that can be closed."""
    self.flush()
    for w in self.writers:
      if hasattr(w, "close"):
        w.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _histogram_record(h: Histogram) -> dict:
  return {"counts": np.asarray(h.counts).tolist(), "min": float(h.min), "max": float(h.max),
          "sum": float(h.sum), "sum_squares": float(h.sum_squares)}


class JsonlWriter:
  """JSON Lines: one ``{"step": N, "scalars": {...}}`` line per step, and one
  ``{"step": N, "histogram": NAME, "counts": [...], ...}`` line per
  histogram (bins: the first line's ``histogram_edges``). Strict JSON:
  NaN/Inf are written as null. Each line is flushed as it is written, so a
  killed run keeps every step it logged."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(self.path))
    os.makedirs(folder, exist_ok=True)
    fresh = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
    self._file = open(self.path, "a", encoding="utf-8")
    if fresh:
      self._line({"gradflow_jsonl": _io.SCHEMA_VERSION,
                  "histogram_edges": HISTOGRAM_EDGES.tolist()})

  def _line(self, record: dict) -> None:
    self._file.write(json.dumps(_io.to_jsonable(record), allow_nan=False) + "\n")
    self._file.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._line({"step": int(step), "scalars": dict(scalars)})

  def write_histogram_counts(self, step: int, name: str, h: Histogram) -> None:
    self._line({"step": int(step), "histogram": name, **_histogram_record(h)})

  def close(self) -> None:
    self._file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """The records of a :class:`JsonlWriter` file (nulls read back as NaN in
  ``scalars``)."""
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        if "scalars" in r:
          r["scalars"] = {k: math.nan if v is None else v for k, v in r["scalars"].items()}
        records.append(r)
  return records


@contextlib.contextmanager
def _quiet_nonfinite_warning():
  """tensorboardX logs a warning for every NaN/Inf scalar; silence it while
  we write (the value is recorded either way)."""
  logger = logging.getLogger("tensorboardX.x2num")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


class TensorBoardWriter:
  """TensorBoard event files through tensorboardX (optional dependency:
  ``pip install gradflow_jax[tensorboard]``): every scalar under its flat
  name, every histogram as a TensorBoard histogram of the fixed bins."""

  def __init__(self, logdir: str | os.PathLike, **kwargs):
    try:
      from tensorboardX import SummaryWriter
    except ImportError as e:
      raise ImportError("TensorBoardWriter needs tensorboardX: pip install "
                        "'gradflow_jax[tensorboard]'") from e
    self._writer = SummaryWriter(os.fspath(logdir), **kwargs)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    with _quiet_nonfinite_warning():  # NaN/Inf are written as such; no log line each
      for name, value in scalars.items():
        self._writer.add_scalar(name, value, global_step=int(step))

  def write_histogram_counts(self, step: int, name: str, h: Histogram) -> None:
    counts = np.asarray(h.counts, np.float64)
    if counts.sum() == 0:
      return
    limits = HISTOGRAM_EDGES[1:].astype(np.float64).copy()
    limits[-1] = max(limits[-1], float(h.max))  # the last bin takes everything above
    self._writer.add_histogram_raw(name, float(h.min), float(h.max), float(counts.sum()),
                                   float(h.sum), float(h.sum_squares), limits.tolist(),
                                   counts.tolist(), global_step=int(step))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _cell(v: Any) -> str:
  v = float(v)
  return "" if math.isnan(v) else f"{v:.4g}"


def flow_step_html(flow: FlowStep) -> str:
  """An HTML table of a step, one row per tap (for notebooks)."""
  flow = jax.device_get(flow)
  if not bool(flow.measured):
    return f"<p>gradflow step not measured (skipped by <code>every</code>); loss " \
           f"{_cell(flow.loss)}</p>"
  head = ("tap", "role", "activation", "mean", "std", "saturated", "dead", "zero", "non-finite",
          "||dL/d tap||")
  rows = []
  a = flow.activations
  for i, name in enumerate(flow.names):
    cells = [html.escape(name), flow.roles[i], html.escape(str(flow.activation_names[i] or "")),
             _cell(a.mean[i]), _cell(a.std[i]), _cell(a.saturation_fraction[i]),
             _cell(a.dead_fraction[i]), _cell(a.zero_fraction[i]), str(int(a.nonfinite[i])),
             _cell(flow.tap_grad_norm[i])]
    rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
  return (f"<p>loss {_cell(flow.loss)}, global gradient norm {_cell(flow.global_norm)}</p>"
          "<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
          + "".join(rows) + "</tbody></table>")


_display.register("flow_step", flow_step_html)
