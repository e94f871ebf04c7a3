"""Training with gradient-flow logging on every step.

The jitted step measures everything (loss, gradient norms before and after
clipping, per-layer gradient, activation and update statistics) from the same
forward/backward pass it trains with. Steps run in chunks under ``lax.scan``
so logs reach the host once per chunk, not once per scalar; batches come from
one shuffle per epoch. A NaN/Inf guard keeps the last finite parameters: it
masks the update inside the fused apply, so guarding costs no extra pass over
the parameters.
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

from gradflow_jax.measure import _stats
from gradflow_jax.models import _mlp
from gradflow_jax.models._config import MLPConfig
from gradflow_jax._data import Dataset

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
ON_NONFINITE = ("stop", "skip")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimizer, schedule, clipping, batches and the NaN/Inf guard."""
  optimizer: str = "adam"
  lr: float = 1e-3
  schedule: str = "constant"
  clip: float | None = None
  steps: int = 300
  batch_size: int = 64
  eval_every: int = 50
  seed: int = 0
  loss: str = "cross_entropy"
  on_nonfinite: str = "stop"
  weight_decay: float = 1e-4

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of: " + ", ".join(OPTIMIZERS))
    if self.schedule not in SCHEDULES:
      raise ValueError(f"unknown schedule {self.schedule!r}; expected one of: " + ", ".join(SCHEDULES))
    if not (math.isfinite(self.lr) and self.lr > 0):
      raise ValueError(f"expected a learning rate > 0, got {self.lr}")
    if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
      raise ValueError(f"expected max_norm (clip) > 0, got {self.clip}")
    for label in ("steps", "batch_size", "eval_every"):
      v = getattr(self, label)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"expected {label} >= 1, got {v!r}")
    if self.on_nonfinite not in ON_NONFINITE:
      raise ValueError(f"expected on_nonfinite in {ON_NONFINITE}, got {self.on_nonfinite!r}")


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
  """optax optimizer with the schedule, behind ``clip_by_global_norm`` if asked."""
  if tc.schedule == "cosine":
    lr = optax.cosine_decay_schedule(tc.lr, tc.steps)
  elif tc.schedule == "warmup_cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, tc.lr, max(1, tc.steps // 10), tc.steps)
  else:
    lr = tc.lr
  opt = {"sgd": lambda: optax.sgd(lr), "momentum": lambda: optax.sgd(lr, momentum=0.9),
         "adam": lambda: optax.adam(lr),
         "adamw": lambda: optax.adamw(lr, weight_decay=tc.weight_decay)}[tc.optimizer]()
  return optax.chain(optax.clip_by_global_norm(tc.clip), opt) if tc.clip else opt


class StepLog(NamedTuple):
  """What one training step measured (per-layer fields indexed by layer)."""
  loss: jax.Array
  grad_norm: jax.Array            # global norm before clipping
  clipped_grad_norm: jax.Array    # after clipping (equal when no clipping)
  clipped: jax.Array              # clipping fired
  nonfinite: jax.Array            # loss or gradients NaN/Inf: update not applied
  weight_grad_norm: jax.Array     # (n_dense,)
  preact_grad_norm: jax.Array     # (depth,)
  act_std: jax.Array              # (depth,)
  saturation_fraction: jax.Array  # (depth,)
  dead_fraction: jax.Array        # (depth,)
  act_nonfinite: jax.Array        # (depth,)
  update_ratio: jax.Array         # (n_dense,) ||delta W|| / ||W||


def _norm(x):
  return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32)))))


def _update_ratios(new_params, params):
  """||W_new - W|| / ||W|| per dense layer. ||W_new - W|| rather than
  ||update||: XLA fuses it with the apply (measured 0.4 ms less per step at
  10 x 256 on CPU than reducing the updates)."""
  return jnp.stack([_norm(n["w"] - p["w"]) / _norm(p["w"])
                    for n, p in zip(new_params["layers"], params["layers"])])


def _logged_step(cfg: MLPConfig, tc: TrainConfig, tx: optax.GradientTransformation,
                 params, opt_state, x, y, halted, keep_opt_state: bool):
  """One step that applies no update when ``halted`` or when its loss or
  gradients are not finite; returns (params, opt_state, log, halt).

  The update is masked (``where(halt, 0, u)``) inside the fused apply, which
  costs no extra pass over the parameters. The optimizer state is only kept
  when ``keep_opt_state``: a stopped run never uses it again, a skipping run
  does (and pays one select over it).
  """
  stats, grads = _stats.probe(cfg, params, x, y, tc.loss)
  g = stats.gradients
  nonfinite = ~(jnp.isfinite(g.loss) & jnp.isfinite(g.global_norm))
  halt = halted | nonfinite
  updates, new_opt = tx.update(grads, opt_state, params)
  updates = jax.tree.map(lambda u: jnp.where(halt, jnp.zeros_like(u), u), updates)
  new_params = optax.apply_updates(params, updates)
  if keep_opt_state:
    new_opt = jax.tree.map(lambda n, o: jnp.where(halt, o, n), new_opt, opt_state)
  clip = jnp.inf if tc.clip is None else tc.clip
  a = stats.activations
  log = StepLog(g.loss, g.global_norm, jnp.minimum(g.global_norm, clip), g.global_norm > clip,
                nonfinite, g.weight_grad_norm, g.preact_grad_norm, a.std, a.saturation_fraction,
                a.dead_fraction, a.nonfinite, _update_ratios(new_params, params))
  return new_params, new_opt, log, halt


def make_step(cfg: MLPConfig, tc: TrainConfig, tx: optax.GradientTransformation):
  """``step(params, opt_state, x, y) -> (params, opt_state, StepLog)``, pure.

  A step whose loss or gradients are not finite leaves params and optimizer
  state unchanged; its log says so (``nonfinite``) and its update ratios are 0.
  """
  def step(params, opt_state, x, y):
    new_params, new_opt, log, _ = _logged_step(cfg, tc, tx, params, opt_state, x, y,
                                               jnp.zeros((), bool), keep_opt_state=True)
    return new_params, new_opt, log
  return step


def _epoch_perm(key, step, n: int, batch_size: int):
  """Shuffled example order of the epoch that holds global ``step``: each
  epoch visits every example at most once (the last partial batch is dropped)."""
  return jax.random.permutation(jax.random.fold_in(key, step // (n // batch_size)), n)


def _next_batch(key, perm, step, n: int, batch_size: int):
  """(order, indices of batch ``step``); the order is redrawn once per epoch,
  not per step (a permutation of the whole set costs more than a small step)."""
  pos = step % (n // batch_size)
  perm = jax.lax.cond(pos == 0, lambda: _epoch_perm(key, step, n, batch_size), lambda: perm)
  return perm, jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)


@functools.lru_cache(maxsize=16)
def _chunk_fn(cfg: MLPConfig, tc: TrainConfig, n_steps: int):
  """Jitted ``n_steps`` of training from global step ``start`` under
  ``lax.scan`` (cached, so that a second run with the same settings compiles
  nothing). Batches depend only on ``key`` and the global step, not on how the
  run is cut into chunks."""
  tx = make_optimizer(tc)
  stop = tc.on_nonfinite == "stop"
  size = tc.batch_size

  @jax.jit
  def run(params, opt_state, stopped, key, start, xs, ys):
    n = xs.shape[0]

    def body(carry, step):
      params, opt_state, stopped, perm = carry
      perm, idx = _next_batch(key, perm, step, n, size)
      # skip: a bad step changes nothing; stop: neither does any step after it
      params, opt_state, log, halt = _logged_step(
          cfg, tc, tx, params, opt_state, xs[idx], ys[idx], stopped, keep_opt_state=not stop)
      return (params, opt_state, halt if stop else stopped, perm), log
    steps = start + jnp.arange(n_steps, dtype=jnp.int32)
    carry = (params, opt_state, stopped, _epoch_perm(key, start, n, size))
    (params, opt_state, stopped, _), logs = jax.lax.scan(body, carry, steps)
    return params, opt_state, stopped, logs
  return run


@functools.partial(jax.jit, static_argnums=0)
def accuracy(cfg: MLPConfig, params, x, y):
  """Share of examples whose arg-max output equals the label."""
  out, _ = _mlp.mlp_apply(cfg, params, x)
  return jnp.mean(jnp.argmax(out, -1) == y)


class TrainResult(NamedTuple):
  """Host results of a run."""
  params: dict
  logs: dict            # StepLog field -> (steps_run, ...) arrays
  eval_steps: np.ndarray
  eval_accuracy: np.ndarray
  stopped_at: int | None       # first step with NaN/Inf loss or gradients
  first_bad_layer: int | None  # first hidden layer with NaN/Inf activations at that step
  first_bad_dense_layer: int | None  # first dense layer whose gradient norm is NaN/Inf there

  def as_record(self, label: str, cfg: MLPConfig, tc: "TrainConfig") -> dict:
    """One run of ``analyze.py train`` as results.json lists it (with its
    per-step ``logs``, which the CLI writes to an .npz beside it)."""
    return {"label": label, "activation": cfg.activation, "depth": cfg.depth,
            "width": cfg.width, "residual": cfg.residual, "norm": cfg.norm,
            "init": cfg.init_spec.name, "optimizer": tc.optimizer, "lr": tc.lr, "clip": tc.clip,
            "steps_run": len(self.logs["loss"]), "final_loss": self.logs["loss"][-1],
            "final_accuracy": self.eval_accuracy[-1], "stopped_at": self.stopped_at,
            "first_bad_layer": self.first_bad_layer,
            "first_bad_dense_layer": self.first_bad_dense_layer, "eval_steps": self.eval_steps,
            "eval_accuracy": self.eval_accuracy, "logs": self.logs}


# the estimates' constants, measured on XLA:CPU (2 cores) with
# _train.train at depths 10-40, widths 64-512, 300-3000 steps (2026-12-07):
# per step the loop's own cost, and the arithmetic rate of the
# forward/backward pass
STEP_SECONDS = 3e-4
FLOPS_PER_SECOND = 1e11
COMPILE_SECONDS_PER_LAYER = 0.03
FIXED_SECONDS = 2.5


def parameter_count(cfg: MLPConfig) -> int:
  """Parameters of ``cfg`` (a residual block holds two layers)."""
  hidden = (cfg.width * cfg.width + cfg.width) * max(cfg.depth - 1, 0)
  return ((cfg.in_dim + 1) * cfg.width + hidden * (2 if cfg.residual else 1)
          + (cfg.width + 1) * cfg.out_dim)


def estimated_bytes(cfg: MLPConfig, tc: TrainConfig, data: Dataset) -> int:
  """Peak memory of a run, about: parameters, gradients, two optimizer
  moments and the update (5x), a step's activations and their gradients with
  the statistics' temporaries (6 per layer and example), the data set held
  on the device, and the per-step logs (a few floats per layer and step)."""
  n = sum(np.asarray(a).size for a in (data.x_train, data.x_test))
  return 4 * (5 * parameter_count(cfg) + 6 * tc.batch_size * cfg.depth * cfg.width + n
              + 16 * (cfg.depth + 2) * tc.steps)


def estimated_seconds(cfg: MLPConfig, tc: TrainConfig) -> float:
  """Wall time of a run, roughly (within about 2x where measured): a fixed
  cost, compiling the unrolled step (``COMPILE_SECONDS_PER_LAYER`` per
  hidden layer), then per step the loop's
  cost and the forward/backward arithmetic (6 flops per parameter and
  example) at ``FLOPS_PER_SECOND``."""
  step = STEP_SECONDS + 6 * tc.batch_size * parameter_count(cfg) / FLOPS_PER_SECOND
  return FIXED_SECONDS + COMPILE_SECONDS_PER_LAYER * cfg.depth + tc.steps * step


def check_data(cfg: MLPConfig, tc: TrainConfig, data: Dataset) -> None:
  if data.x_train.shape[1] != cfg.in_dim:
    raise ValueError(f"expected inputs with {cfg.in_dim} features, got {data.x_train.shape[1]}")
  if tc.batch_size > len(data.x_train):
    raise ValueError(f"expected a batch size <= {len(data.x_train)} training examples, "
                     f"got {tc.batch_size}")
  for name, y in (("y_train", data.y_train), ("y_test", data.y_test)):
    if y.min() < 0 or y.max() >= cfg.out_dim:
      raise ValueError(f"expected labels in [0, {cfg.out_dim}) in {name}, got [{y.min()}, {y.max()}]")


def train(cfg: MLPConfig, tc: TrainConfig, data: Dataset, params=None,
          on_chunk: Callable[[int, dict], None] | None = None) -> TrainResult:
  """Trains ``cfg`` on ``data``, logging every step.

  Args:
    cfg, tc, data: model, training settings, data.
    params: initial parameters (drawn from ``tc.seed`` when ``None``).
    on_chunk: called after every chunk of ``tc.eval_every`` steps with the
      number of steps done and the results so far (to write logs as the run
      goes and to show progress).

  Raises:
    ValueError: bad settings or data, before anything is compiled.
  """
  check_data(cfg, tc, data)
  if params is not None:
    _mlp.check_params(cfg, params)
  key = jax.random.key(tc.seed)
  kp, kd = jax.random.split(key)
  params = _mlp.init_mlp(kp, cfg) if params is None else params
  tx = make_optimizer(tc)
  opt_state = tx.init(params)
  xs, ys = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  xt, yt = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  logs, evals = [], []
  stopped = jnp.zeros((), bool)
  done = 0
  result = None
  chunk_tc = dataclasses.replace(tc, seed=0, eval_every=1)  # what a chunk depends on
  while done < tc.steps:
    n = min(tc.eval_every, tc.steps - done)
    params, opt_state, stopped, chunk_logs = _chunk_fn(cfg, chunk_tc, n)(
        params, opt_state, stopped, kd, jnp.int32(done), xs, ys)
    chunk_logs = jax.device_get(chunk_logs)  # one transfer per chunk
    logs.append(chunk_logs)
    done += n
    evals.append((done, float(accuracy(cfg, params, xt, yt))))
    result = _collect(params, logs, evals, tc)
    if on_chunk is not None:
      on_chunk(done, result)
    if result.stopped_at is not None and tc.on_nonfinite == "stop":
      break
  return result


def _collect(params, logs, evals, tc) -> TrainResult:
  merged = {f: np.concatenate([getattr(l, f) for l in logs]) for f in StepLog._fields}
  bad = np.nonzero(merged["nonfinite"])[0]
  stopped_at = int(bad[0]) if bad.size else None
  first_layer = first_dense = None
  if stopped_at is not None:
    if tc.on_nonfinite == "stop":
      merged = {k: v[:stopped_at + 1] for k, v in merged.items()}
    layers = np.nonzero(merged["act_nonfinite"][stopped_at])[0]
    first_layer = int(layers[0]) if layers.size else None
    dense = np.nonzero(~np.isfinite(merged["weight_grad_norm"][stopped_at]))[0]
    first_dense = int(dense[0]) if dense.size else None
  steps, acc = (np.asarray(v) for v in zip(*evals))
  if stopped_at is not None and tc.on_nonfinite == "stop":
    steps = np.minimum(steps, stopped_at)  # the kept parameters: after stopped_at updates
  return TrainResult(params, merged, steps, acc, stopped_at, first_layer, first_dense)
