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
from gradflow_jax.watch._flow_step import FlowStep, Histogram, HISTOGRAM_EDGES
from gradflow_jax.watch._metrics import (_named_leaves, flat_metrics, histograms, leaf_names,
                                         tier_metrics)



class MetricWriter(Protocol):
  """What :func:`log_step` needs: CLU's ``MetricWriter.write_scalars``.
  A writer that also has ``write_histogram_counts(step, name, Histogram)``
  gets the in-jit histograms."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    ...


def log_step(writer: MetricWriter, step: int, flow: FlowStep | None = None,
             update_ratios=None, **tiers) -> dict:
  """Writes a step's scalars (and histograms, where the writer takes them);
  returns the scalars. ``tiers``: the keyword arguments of :func:`tier_metrics`
  (``params=`` or ``names=`` for the leaf names, ``norms=``, ``health=``,
  ``spectra=``, ``stable_rank=``, ``clip=``, ``curvature=``, ``noise=``),
  logged beside the flow tier."""
  return _write_step([writer], step, flow, update_ratios, tiers)


def _write_step(writers, step: int, flow: FlowStep | None, update_ratios=None,
                tiers: dict | None = None) -> dict:
  """One step to every writer, its numbers read from the device once."""
  tiers = dict(tiers or {})
  scalars = {}
  if any(tiers.get(k) is not None for k in ("norms", "health", "spectra", "curvature", "noise")):
    names = tiers.pop("names", None)
    params = tiers.pop("params", None)
    if names is None and params is None:
      raise ValueError("expected params= or names= (the parameter leaves) with the norms, "
                       "health or spectra tiers")
    scalars.update(tier_metrics(names if names is not None else params, **tiers))
  if flow is not None:
    scalars.update(flat_metrics(flow, update_ratios))
  elif update_ratios is not None:
    scalars.update(_named_leaves("update_ratio", jax.device_get(update_ratios)))
  hists = None
  for writer in writers:
    writer.write_scalars(int(step), scalars)
    if hasattr(writer, "write_histogram_counts"):
      hists = (histograms(flow) if flow is not None else {}) if hists is None else hists
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

  def __call__(self, step: int, flow: FlowStep | None = None, update_ratios=None,
               **tiers) -> None:
    """``tiers``: as for :func:`log_step` (``params=``/``names=``, ``norms=``,
    ``health=``, ``spectra=``, ``stable_rank=``, ``clip=``)."""
    for leaf in jax.tree.leaves((flow, update_ratios, {k: v for k, v in tiers.items()
                                                         if k not in ("params", "names")})):
      if hasattr(leaf, "copy_to_host_async"):
        leaf.copy_to_host_async()
    self.flush()
    if "params" in tiers:  # the names now: the params may be donated by the next step
      tiers["names"] = leaf_names(tiers.pop("params"))
    self._pending = (int(step), flow, update_ratios, tiers)

  def flush(self) -> None:
    """Writes the step held back, if any."""
    if self._pending is None:
      return
    step, flow, ratios, tiers = self._pending
    self._pending = None
    self.last = (step, _write_step(self.writers, step, flow, ratios, tiers))

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
