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
from gradflow_jax.watch import _curvature, _monitor, _recorder, _spectra, _watch, _writers
from gradflow_jax.watch._optimizer import adam_health
from gradflow_jax._data import Dataset

OPTIMIZERS = ("sgd", "momentum", "adam")
# what a run can watch: per-leaf norms and the flight recorder (every step),
# the monitored step's flow statistics, weight spectra, Adam's health
TIERS = ("norms", "flow", "spectra", "optimizer", "curvature", "blocks", "noise")
NOISE_MICRO = 4  # micro-batches of the noise tier


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
  watch: tuple | None = None  # tiers; None: norms, flow, and optimizer with adam
  log_every: tuple = ()  # (tier, n) pairs: log that tier every n steps

  def __post_init__(self):
    if self.watch is not None:
      bad = [t for t in self.watch if t not in TIERS]
      if bad or not self.watch:
        raise ValueError(f"expected --watch tiers from {', '.join(TIERS)}, got "
                         f"{','.join(map(str, self.watch)) or 'none'}")
      if "optimizer" in self.watch and self.optimizer != "adam":
        raise ValueError(f"expected --optimizer adam for the optimizer tier (Adam's moments), "
                         f"got {self.optimizer}")
      if "noise" in self.watch and self.batch_size % NOISE_MICRO:
        raise ValueError(f"expected --batch-size a multiple of {NOISE_MICRO} for the noise tier "
                         f"(its micro-batches), got {self.batch_size}")
    for tier, n in self.log_every:
      if tier == "blocks":
        raise ValueError("expected --every curvature=N (each leaf's sharpness is measured "
                         "with the curvature tier), got blocks=N")
      if tier not in TIERS or not isinstance(n, int) or n < 1:
        raise ValueError(f"expected --every TIER=N with TIER in {', '.join(TIERS)} and N >= 1, "
                         f"got {tier}={n}")
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


def tiers(tc: ModelTrainConfig) -> tuple[str, ...]:
  """The tiers a run watches, in :data:`TIERS` order."""
  if tc.watch is not None:  # blocks (each leaf's sharpness) comes with curvature
    watch = set(tc.watch) | ({"curvature"} if "blocks" in tc.watch else set())
    return tuple(t for t in TIERS if t in watch)
  return ("norms", "flow") + (("optimizer",) if tc.optimizer == "adam" else ())


def every(tc: ModelTrainConfig, tier: str) -> int:
  """How often ``tier`` is logged: ``log_every``'s, else 1 for norms and
  optimizer (the recorder holds them every step anyway) and ``every`` for
  the others (curvature and noise are measured only then)."""
  given = dict(tc.log_every)
  return given.get(tier, 1 if tier in ("norms", "optimizer") else tc.every)


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
  tiers: tuple = ("norms", "flow")
  series: dict | None = None  # per tier but flow: {"steps": [...], field: (steps, leaves)}
  triggers: list | None = None  # every step a recorder trigger fired: {"step", "reasons"}

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
            "flight_recorder": self.recorder_summary(), "watch": self.watch_dict()}

  def watch_dict(self) -> dict:
    """The tiers watched, the leaves' names and per tier but flow its logged
    steps and per field a (steps, leaves) list; every step a trigger fired."""
    series = {tier: {k: (v if k == "steps" else np.asarray(v).tolist())
                     for k, v in s.items()} for tier, s in (self.series or {}).items()}
    return {"tiers": list(self.tiers), "leaves": self.params_names, **series,
            "triggers": list(self.triggers or []),
            **({"spectra_tol": SPECTRA.tol} if "spectra" in self.tiers else {})}

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
            "reasons": _recorder.reason_texts(bits)}


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


def train_model(model: _probe.ProbedModel, data: Dataset, loss: Callable,
                tc: ModelTrainConfig, writers=(), on_log: Callable | None = None,
                batches=None) -> ModelTrainResult:
  """Trains ``model.params`` on ``data`` (host loop, one jitted step), logging
  each watched tier (:func:`tiers`) every :func:`every` steps to ``writers``.
  ``batches``: an iterator of ``(x, y)`` training batches to use instead of
  mini-batches of ``data`` (which then only gives the test accuracy)."""
  watched = tiers(tc)
  tx, step = _compiled_step(model._replace(params=None), loss, dataclasses.replace(
      tc, window=1, seed=0, steps=tc.steps if tc.on_nonfinite == "skip" else 1))

  # weakly typed leaves (jnp.full(shape, 0.5)) come back strong from the
  # first step and would compile the step a second time: make them strong now
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.result_type(a)), model.params)
  names = _writers.leaf_names(params)
  opt_state = tx.init(params)
  curvature, noise = _curvature_tiers(tc)
  carried = (RECORDER.init(params, adam="optimizer" in watched) if "norms" in watched else None,
             SPECTRA.init(params, jax.random.key(tc.seed)) if "spectra" in watched else None,
             curvature.init(params, jax.random.key(tc.seed)) if curvature else None,
             noise.init(params) if noise else None)
  losses, steps, metrics, flows = [], [], [], []
  series = {t: {"steps": [], "values": []} for t in watched if t not in ("flow", "blocks")}
  triggers = []
  stopped_at = first_bad = None
  skipped = 0
  if batches is None:
    draw = _batches(len(data.x_train), tc.batch_size, tc.seed)
    batches = ((data.x_train[idx], data.y_train[idx]) for idx in draw)
  for i in range(tc.steps):
    x, y = _next_batch(batches, i)
    new, new_state, value, flow, ratios, carried, out = step(params, opt_state, carried, x, y,
                                                             jnp.int32(i))
    losses.append(value)
    out = jax.device_get(out)
    if out["reasons"] is not None and int(out["reasons"]):
      triggers.append({"step": i, "reasons": _recorder.reason_texts(int(out["reasons"]))})
    bad = int(_bad_steps(new_state, tc))
    if bad > skipped:
      if stopped_at is None:
        stopped_at = i
        first_bad = _first_nonfinite_tap(model, loss, params, x, y)
      skipped = bad
      if tc.on_nonfinite == "stop":
        break
    params, opt_state = new, new_state
    scalars = {}
    logged = {t: out[t] for t in series if i % every(tc, t) == 0}
    for t, v in logged.items():
      series[t]["steps"].append(i)
      series[t]["values"].append(v)
    if logged:
      scalars.update(_writers.tier_metrics(
          names, norms=logged.get("norms"), health=logged.get("optimizer"),
          spectra=logged.get("spectra"), stable_rank=out["stable_rank"] if "spectra" in logged
          else None, clip=tc.clip, spectra_tol=SPECTRA.tol, curvature=logged.get("curvature"),
          noise=logged.get("noise")))
    if "flow" in watched and i % every(tc, "flow") == 0:
      flow = jax.device_get(flow)
      scalars.update(_writers.flat_metrics(flow, ratios))
      steps.append(i)
      flows.append(flow)
    if scalars:
      for w in writers:
        w.write_scalars(i, scalars)
        if hasattr(w, "write_histogram_counts") and steps and steps[-1] == i:
          for name, h in flow.histograms.items():
            w.write_histogram_counts(i, name, h)
      if steps and steps[-1] == i:
        metrics.append(scalars)
    if on_log is not None and i % tc.every == 0:
      on_log(i)
  acc = accuracy(model, params, jnp.asarray(data.x_test), jnp.asarray(data.y_test))
  info = flows[-1] if flows else jax.device_get(
      _watch.model_value_and_grad(model, loss)(params, x, y)[2])
  return ModelTrainResult(info.names, info.roles, info.activation_names,
                          np.asarray(jax.device_get(losses), float), steps, metrics, flows,
                          stopped_at, first_bad, acc, params, skipped, tc.on_nonfinite,
                          jax.device_get(carried[0]), watched, _stacked(series), triggers)


def _next_batch(batches, i: int):
  """The next (x, y) as device arrays."""
  try:
    x, y = next(batches)
  except StopIteration:
    raise ValueError(f"expected a training batch for every step, got none at step {i} "
                     "(the factory's batch iterator ran out; lower --steps)") from None
  return jnp.asarray(x), jnp.asarray(y)


def _stacked(series: dict) -> dict:
  """Per tier ``{"steps": [...], field: (logged steps, leaves) array}``."""
  out = {}
  for tier, s in series.items():
    values = s["values"]
    fields = {k: np.stack([np.asarray(getattr(v, k)) for v in values])
              for k in (values[0]._fields if values else ())
              if k != "vectors" and getattr(values[0], k) is not None}
    out[tier] = {"steps": list(s["steps"]), **fields}
  return out


@functools.lru_cache(maxsize=8)
def _compiled_step(model: _probe.ProbedModel, loss: Callable, tc: ModelTrainConfig):
  """(optimizer, jitted step) for a model (without its params) and the
  settings that shape the step: a second run of the same model and settings
  (another seed, other data, other initial params) reuses the compiled step."""
  tx = _optimizer(tc)
  watched = tiers(tc)
  monitored = _watch.model_value_and_grad(model, loss, every=every(tc, "flow"), histograms=True)
  flow_on = "flow" in watched

  curvature, noise = _curvature_tiers(tc)
  batch_loss = lambda p, batch: loss(model.forward(p, batch[0], None)[0], batch[1])

  @jax.jit
  def step(params, opt_state, carried, x, y, i):
    rec, spectra, curv, noisy = carried
    value, grads, flow = (monitored(params, x, y, step=i) if flow_on
                          else monitored(params, x, y, measure=False))
    updates, opt_state = tx.update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    out = {"reasons": None, "stable_rank": None}
    if rec is not None:
      health = adam_health(opt_state, grads) if "optimizer" in watched else None
      norms = _recorder.step_norms(value, grads, params, updates)
      rec = RECORDER.update(rec, i, norms, health)
      out.update(norms=norms, optimizer=health, reasons=rec.step_reasons)
    if spectra is not None:
      spectra = SPECTRA.update(spectra, new)
      out.update(spectra=spectra._replace(vectors=()),
                 stable_rank=_spectra.stable_ranks(new, spectra.sigma))
    if curv is not None:  # the curvature the step's update saw: params before it
      curv = curvature.update(curv, batch_loss, params, (x, y), i, lr=tc.lr,
                              opt_state=opt_state)
      out["curvature"] = curv._replace(vector=None, preconditioned_vector=None,
                                       block_vector=None)
    if noisy is not None:
      noisy = noise.update(noisy, batch_loss, params, (x, y), i)
      last = (noisy.count - 1) % noise.window  # this measurement's slot
      out["noise"] = noisy._replace(grad_sq=noisy.grad_sq[last], trace=noisy.trace[last],
                                    leaf_grad_sq=None, leaf_trace=None)
    ratios = _watch.update_ratios(params, new, when=flow.measured) if flow_on else None
    return new, opt_state, value, flow, ratios, (rec, spectra, curv, noisy), out
  return tx, step


RECORDER = _recorder.FlightRecorder(window=64)  # the flight recorder of a --model run
CURVATURE_STEPS = 20  # Lanczos steps of the curvature tier, warm-started


def _curvature_tiers(tc: ModelTrainConfig):
  """The run's Curvature (sharpness and Adam's preconditioned one; each
  leaf's too with the ``blocks`` tier: one Hessian-vector product per leaf
  and Lanczos step) and GradientNoise tiers, or None where not watched."""
  watched = tiers(tc)
  curvature = _curvature.Curvature(
      every=every(tc, "curvature"), steps=CURVATURE_STEPS, blocks="blocks" in watched,
      adam=tc.optimizer == "adam", momentum=0.9 if tc.optimizer == "momentum" else 0.0
  ) if "curvature" in watched else None
  noise = _curvature.GradientNoise(every=every(tc, "noise"), micro=NOISE_MICRO) \
      if "noise" in watched else None
  return curvature, noise
# one power-iteration pair per matrix and step; an estimate is settled once it
# moved by at most 1% in its last step (the weights move too while training)
SPECTRA = _spectra.WeightSpectra(tol=1e-2)


def _first_nonfinite_tap(model, loss, params, x, y) -> str | None:
  """The first tap whose activations or gradient are NaN/Inf on the batch
  that stopped the run, from the last finite parameters."""
  flow = jax.device_get(jax.jit(_watch.model_value_and_grad(model, loss))(params, x, y)[2])
  bad = (np.asarray(flow.activations.nonfinite) > 0) | ~np.isfinite(
      np.asarray(flow.tap_grad_norm, float))
  return flow.names[int(np.argmax(bad))] if bad.any() else None
