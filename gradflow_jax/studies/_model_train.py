"""Training any probed model with the monitored step, and the findings over a
window of logged steps (what ``analyze.py train --model`` runs).

The step is jitted once; the loop is host code: it draws batches, reads each
logged step's :class:`~gradflow_jax.watch._flow_step.FlowStep` and sends it to the
writers. A NaN/Inf gradient stops the run with the last finite parameters
(``stop_if_nonfinite``); that step is then measured once more, from those
parameters, to name the first tap that went non-finite.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow_jax.capture import _probed as _probe
from gradflow_jax.diagnosis import _diagnose
from gradflow_jax.watch import _monitor, _recorder, _watch, _writers
from gradflow_jax.watch._optimizer import adam_health
from gradflow_jax._data import Dataset

OPTIMIZERS = ("sgd", "momentum", "adam")
# 100x the ~1e-3 rule of thumb either way, held over the whole window
UPDATE_RATIO_LOW = 1e-5
UPDATE_RATIO_HIGH = 1e-1


@dataclasses.dataclass(frozen=True)
class ModelTrainConfig:
  """Optimizer, batches and how often to measure (``every``)."""
  optimizer: str = "adam"
  lr: float = 1e-3
  clip: float | None = None
  steps: int = 200
  batch_size: int = 64
  every: int = 10
  window: int = 5
  seed: int = 0
  on_nonfinite: str = "stop"

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"expected --optimizer in {OPTIMIZERS}, got {self.optimizer!r}")
    if self.on_nonfinite not in ("stop", "skip"):
      raise ValueError(f"expected on_nonfinite 'stop' or 'skip', got {self.on_nonfinite!r}")
    for name in ("steps", "batch_size", "every", "window"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"expected {name} >= 1, got {v!r}")
    if not (math.isfinite(self.lr) and self.lr > 0):
      raise ValueError(f"expected a learning rate > 0, got {self.lr}")


def _optimizer(tc: ModelTrainConfig) -> optax.GradientTransformation:
  opt = {"sgd": lambda: optax.sgd(tc.lr), "momentum": lambda: optax.sgd(tc.lr, momentum=0.9),
         "adam": lambda: optax.adam(tc.lr)}[tc.optimizer]()
  chain = optax.chain(*([optax.clip_by_global_norm(tc.clip)] if tc.clip else []), opt)
  if tc.on_nonfinite == "skip":  # optax's own: a bad step is not applied, the run goes on
    return optax.apply_if_finite(chain, max_consecutive_errors=tc.steps + 1)
  return _monitor.stop_if_nonfinite(chain)


def _bad_steps(opt_state, tc: ModelTrainConfig):
  """Steps whose update was refused so far: 1 once stopped, or optax's count."""
  if tc.on_nonfinite == "skip":
    return optax.tree.get(opt_state, "total_notfinite")
  return _monitor.stopped(opt_state).astype(jnp.int32)


class ModelTrainResult(NamedTuple):
  """A run: ``losses`` per step; per logged step (``steps``) the flat
  metrics (``metrics``, as written to the writers) and the FlowSteps
  (``flows``); the first step whose loss or gradients were NaN/Inf
  (``stopped_at``: where a "stop" run ended, or the first step a "skip" run
  dropped) and its first non-finite tap; how many steps were dropped
  (``skipped``); test accuracy."""
  names: tuple
  roles: tuple
  activation_names: tuple
  losses: np.ndarray
  steps: list
  metrics: list
  flows: list
  stopped_at: int | None
  first_nonfinite_tap: str | None
  accuracy: float | None
  params: object
  skipped: int = 0
  on_nonfinite: str = "stop"
  recorder: object = None  # the flight recorder's RecorderState (norms tier, window 64)

  def as_dict(self) -> dict:
    """The results.json layout of the run: per tap its series over the
    logged steps (``tap_stats``: std, saturation/dead/zero/always-active
    fractions, ||dL/d tap|| as ``grad_norm``), the loss per step, the update
    ratios and global gradient norm per logged step."""
    fields = ("std", "saturation_fraction", "dead_fraction", "zero_fraction",
              "always_active_fraction")
    taps = {name: {k: [float(getattr(f.activations, k)[i]) for f in self.flows] for k in fields}
            for i, name in enumerate(self.names)}
    for i, name in enumerate(self.names):
      taps[name]["grad_norm"] = [float(f.tap_grad_norm[i]) for f in self.flows]
    last = self.metrics[-1] if self.metrics else {}
    return {"taps": list(self.names), "roles": list(self.roles),
            "activation_names": list(self.activation_names),
            "steps_run": len(self.losses), "stopped_at": self.stopped_at,
            "skipped_steps": self.skipped, "first_nonfinite_tap": self.first_nonfinite_tap,
            "final_loss": float(self.losses[-1]) if len(self.losses) else None,
            "test_accuracy": self.accuracy, "loss": self.losses, "logged_steps": self.steps,
            "tap_stats": taps,
            "update_ratio": {k.split("/", 1)[1]: [m.get(k) for m in self.metrics]
                             for k in last if k.startswith("update_ratio/")},
            "global_norm": [m.get("grad_norm/global") for m in self.metrics],
            "flight_recorder": self.recorder_summary()}

  @property
  def params_names(self) -> list[str]:
    """The parameter leaves' names, in the recorder's order."""
    return _writers.leaf_names(self.params)

  def recorder_summary(self) -> dict | None:
    """The flight recorder's trigger: ``{"fired_step", "reasons"}`` (step None
    when nothing fired), or None without a recorder."""
    if self.recorder is None:
      return None
    fired, bits = int(self.recorder.fired_step), int(self.recorder.reasons)
    return {"fired_step": fired if fired >= 0 else None,
            "reasons": [text for bit, text in _recorder.REASONS.items() if bits & bit]}


def _batches(n: int, batch: int, seed: int):
  """Indices of one mini-batch per step: a fresh shuffle every epoch."""
  rng = np.random.default_rng(seed)
  batch = min(batch, n)
  while True:
    order = rng.permutation(n)
    for at in range(0, n - batch + 1, batch):
      yield order[at:at + batch]


def accuracy(model: _probe.ProbedModel, params, x, y) -> float | None:
  """Share of examples whose arg-max output is the label (None for
  non-integer targets or outputs that are not (batch, classes))."""
  if not np.issubdtype(np.asarray(y).dtype, np.integer):
    return None
  out = jax.jit(lambda p, x: model.forward(p, x, None)[0])(params, x)
  if out.ndim != 2:
    return None
  return float(np.mean(np.argmax(np.asarray(out), axis=-1) == np.asarray(y)))


# The cost model of a --model run, measured on 2 CPU cores (jax 0.10):
# `train --model examples/nnx_mlp.py:make` took 10.9 s for 50 steps and
# 12.1 s for 450 (3 ms a step, the host loop's own cost at 43k parameters);
# the arithmetic is counted at FLOPS_PER_SECOND.
FIXED_SECONDS = 10.0
STEP_SECONDS = 3e-3
FLOPS_PER_SECOND = 2e10


def estimated_bytes(params, tap_shapes: dict, examples: int, tc: ModelTrainConfig,
                    data: Dataset) -> int:
  """Peak memory of a run, about: parameters, gradients, optimizer moments and
  the update (5x); a step's taps and their gradients with the statistics'
  temporaries (6x) and the test set's forward pass; the data set; and what the
  run keeps per step (the loss) and per logged step (every tap's statistics
  and histograms). ``tap_shapes`` are the taps of ``examples`` examples."""
  params_n = sum(int(np.size(a)) for a in jax.tree.leaves(params))
  per_example = sum(int(np.prod(s.shape)) for s in tap_shapes.values()) / max(examples, 1)
  batch = min(tc.batch_size, len(data.x_train))
  n_data = sum(int(np.size(a)) for a in data[:4])
  logged = -(-tc.steps // tc.every)
  per_log = len(tap_shapes) * (2 * 64 + 32) + 4 * len(jax.tree.leaves(params))
  return int(4 * (5 * params_n + per_example * (6 * batch + len(data.x_test)) + n_data)
             + 128 * tc.steps + 4 * per_log * logged)


def estimated_seconds(params, tap_shapes: dict, examples: int, tc: ModelTrainConfig,
                      data: Dataset) -> float:
  """Wall time of a run, roughly: a fixed cost (imports, compiling), then per
  step the host loop's cost and the arithmetic (6 flops per parameter and
  example, 20 per tapped value and example)."""
  params_n = sum(int(np.size(a)) for a in jax.tree.leaves(params))
  per_example = sum(int(np.prod(s.shape)) for s in tap_shapes.values()) / max(examples, 1)
  batch = min(tc.batch_size, len(data.x_train))
  flops = batch * (6 * params_n + 20 * per_example)
  return FIXED_SECONDS + tc.steps * (STEP_SECONDS + flops / FLOPS_PER_SECOND)


def train_model(model: _probe.ProbedModel, data: Dataset, loss: Callable,
                tc: ModelTrainConfig, writers=(), on_log: Callable | None = None
                ) -> ModelTrainResult:
  """Trains ``model.params`` on ``data`` (host loop, one jitted step),
  logging every ``tc.every``-th step to ``writers`` (``gf.log_step``)."""
  tx, step = _compiled_step(model._replace(params=None), loss, dataclasses.replace(
      tc, batch_size=1, window=1, seed=0, steps=tc.steps if tc.on_nonfinite == "skip" else 1))

  # weakly typed leaves (jnp.full(shape, 0.5)) come back strong from the
  # first step and would compile the step a second time: make them strong now
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.result_type(a)), model.params)
  opt_state = tx.init(params)
  rec = RECORDER.init(params, adam=tc.optimizer == "adam")
  losses, steps, metrics, flows = [], [], [], []
  stopped_at = first_bad = None
  skipped = 0
  batches = _batches(len(data.x_train), tc.batch_size, tc.seed)
  for i in range(tc.steps):
    idx = next(batches)
    x, y = jnp.asarray(data.x_train[idx]), jnp.asarray(data.y_train[idx])
    new, new_state, value, flow, ratios, rec = step(params, opt_state, rec, x, y, jnp.int32(i))
    losses.append(value)
    bad = int(_bad_steps(new_state, tc))
    if bad > skipped:
      if stopped_at is None:
        stopped_at = i
        first_bad = _first_nonfinite_tap(model, loss, params, x, y)
      skipped = bad
      if tc.on_nonfinite == "stop":
        break
    params, opt_state = new, new_state
    if i % tc.every == 0:
      flow = jax.device_get(flow)
      scalars = _writers.flat_metrics(flow, ratios)
      for w in writers:
        w.write_scalars(i, scalars)
        if hasattr(w, "write_histogram_counts"):
          for name, h in flow.histograms.items():
            w.write_histogram_counts(i, name, h)
      steps.append(i)
      metrics.append(scalars)
      flows.append(flow)
      if on_log is not None:
        on_log(i)
  acc = accuracy(model, params, jnp.asarray(data.x_test), jnp.asarray(data.y_test))
  info = flows[-1] if flows else jax.device_get(
      _watch.model_value_and_grad(model, loss)(params, x, y)[2])
  return ModelTrainResult(info.names, info.roles, info.activation_names,
                          np.asarray(jax.device_get(losses), float), steps, metrics, flows,
                          stopped_at, first_bad, acc, params, skipped, tc.on_nonfinite,
                          jax.device_get(rec))


@functools.lru_cache(maxsize=8)
def _compiled_step(model: _probe.ProbedModel, loss: Callable, tc: ModelTrainConfig):
  """(optimizer, jitted step) for a model (without its params) and the
  settings that shape the step: a second run of the same model and settings
  (another seed, other data, other initial params) reuses the compiled step."""
  tx = _optimizer(tc)
  watched = _watch.model_value_and_grad(model, loss, every=tc.every, histograms=True)
  adam = tc.optimizer == "adam"

  @jax.jit
  def step(params, opt_state, rec, x, y, i):
    value, grads, flow = watched(params, x, y, step=i)
    updates, opt_state = tx.update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    health = adam_health(opt_state, grads) if adam else None
    rec = RECORDER.update(rec, i, _recorder.step_norms(value, grads, params, updates), health)
    return (new, opt_state, value, flow, _watch.update_ratios(params, new, when=flow.measured),
            rec)
  return tx, step


RECORDER = _recorder.FlightRecorder(window=64)  # the flight recorder of a --model run


def _first_nonfinite_tap(model, loss, params, x, y) -> str | None:
  """The first tap whose activations or gradient are NaN/Inf on the batch
  that stopped the run, from the last finite parameters."""
  flow = jax.device_get(jax.jit(_watch.model_value_and_grad(model, loss))(params, x, y)[2])
  bad = (np.asarray(flow.activations.nonfinite) > 0) | ~np.isfinite(
      np.asarray(flow.tap_grad_norm, float))
  return flow.names[int(np.argmax(bad))] if bad.any() else None


def histogram_series(result: ModelTrainResult, kind: str) -> dict[str, np.ndarray]:
  """Per tap, the (logged steps, bins) histogram counts of its values
  (``kind="act"``) or of dL/d tap (``"grad"``), bins ``HISTOGRAM_EDGES``."""
  return {name: np.stack([np.asarray(f.histograms[f"{kind}/{name}"].counts) for f in result.flows])
          for name in result.names} if result.flows else {}


def window_findings(result: ModelTrainResult, window: int) -> list[_diagnose.Finding]:
  """Findings that hold on every one of the last ``window`` logged steps (a
  tap whose gradient stays vanishing, units dead the whole time), update
  ratios far from ~1e-3 on every step of the window, and where a NaN/Inf
  stopped the run. Host-only."""
  found = []
  if result.stopped_at is not None:
    where = f" (first at tap {result.first_nonfinite_tap})" if result.first_nonfinite_tap else ""
    done = ("the run stopped with the last finite parameters" if result.on_nonfinite == "stop" else
            f"{result.skipped} of {len(result.losses)} steps skipped (not applied)")
    found.append(_diagnose.Finding(
        "error", "nonfinite_training", (),
        f"loss or gradients NaN/Inf at step {result.stopped_at}{where}; {done}",
        {"step": result.stopped_at, "first_tap": result.first_nonfinite_tap,
         "skipped": result.skipped},
        "lower the learning rate or clip gradients (--clip); check the data for NaN/Inf"))
  flows = [f for f in result.flows[-window:] if bool(f.measured)]
  if not flows:
    return found
  per_step = [_diagnose.diagnose_model(f.flow_stats) for f in flows]
  key = lambda f: (f.kind, f.layers)
  common = set(map(key, per_step[0])).intersection(*[set(map(key, s)) for s in per_step[1:]])
  steps = result.steps[-len(flows):]
  for f in per_step[-1]:
    if key(f) in common:
      found.append(f._replace(
          message=f"{f.message}, on each of the last {len(flows)} logged steps "
                  f"({steps[0]}-{steps[-1]})",
          evidence={**f.evidence, "window_steps": [steps[0], steps[-1]]}))
  found += _update_ratio_findings(result.metrics[-len(flows):], steps)
  return sorted(found, key=lambda f: _diagnose.SEVERITIES.index(f.severity))


def _update_ratio_findings(metrics: list[dict], steps: list[int]) -> list[_diagnose.Finding]:
  names = [k for k in metrics[-1] if k.startswith("update_ratio/")]
  low, high = [], []
  for k in names:
    v = np.asarray([m.get(k, np.nan) for m in metrics], float)
    if np.all(np.isfinite(v)) and np.all(v < UPDATE_RATIO_LOW):
      low.append(k.split("/", 1)[1])
    if np.all(np.isfinite(v)) and np.all(v > UPDATE_RATIO_HIGH):
      high.append(k.split("/", 1)[1])
  out = []
  span = f"steps {steps[0]}-{steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"
  if high:
    out.append(_diagnose.Finding(
        "warning", "update_ratio_high", (),
        f"update/weight ratio above {UPDATE_RATIO_HIGH:g} on every logged step ({span}) for "
        f"{_shown(high)} (rule of thumb ~1e-3)", {"leaves": high},
        "lower the learning rate (or clip), these weights change by over a tenth a step"))
  if low:
    out.append(_diagnose.Finding(
        "info", "update_ratio_low", (),
        f"update/weight ratio below {UPDATE_RATIO_LOW:g} on every logged step ({span}) for "
        f"{_shown(low)} (rule of thumb ~1e-3)", {"leaves": low},
        "these parameters barely move: raise the learning rate, or check for vanishing "
        "gradients upstream"))
  return out


def _shown(names: list[str]) -> str:
  return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
