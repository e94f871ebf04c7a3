"""The flight recorder: the last K steps' per-leaf norms, kept in the training
state and updated inside jit, with triggers (a non-finite loss, gradient or
parameter; a loss spike; an update-norm jump) evaluated there too. The host
reads ``state.new_trigger`` and, when it is set, writes what the window holds
(:mod:`gradflow_jax.watch._forensics`).

  recorder = gf.watch.FlightRecorder(window=64)
  rec = recorder.init(params)
  ...inside the jitted step:
  norms = gf.watch.step_norms(loss, grads, params, updates)
  rec = recorder.update(rec, step, norms)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradflow_jax.measure._norms import leaf_norm
from gradflow_jax.watch._optimizer import AdamHealth

# trigger bits of RecorderState.reasons
NONFINITE, LOSS_SPIKE, UPDATE_JUMP = 1, 2, 4
REASONS = {NONFINITE: "non-finite loss, gradient or parameter (or a norm beyond float range)",
           LOSS_SPIKE: "loss spike", UPDATE_JUMP: "update-norm jump"}


def reason_texts(bits: int) -> list[str]:
  """The triggers named by ``bits`` (host code)."""
  return [text for bit, text in REASONS.items() if bits & bit]


class StepNorms(NamedTuple):
  """One step's ``norms`` tier, every per-leaf field in the leaf order of
  ``jax.tree.leaves(params)``.

  Attributes:
    loss: the step's loss.
    grad_norm: ||g|| per leaf.
    param_norm: ||p|| per leaf, before the update.
    update_norm: ||update|| per leaf (what the optimizer adds to p).
    grad_nonfinite: NaN/Inf entries of each leaf's gradient.
    param_nonfinite: NaN/Inf entries of each leaf's parameters.
  """
  loss: jax.Array
  grad_norm: jax.Array
  param_norm: jax.Array
  update_norm: jax.Array
  grad_nonfinite: jax.Array
  param_nonfinite: jax.Array

  @property
  def update_ratio(self) -> jax.Array:
    """||update|| / ||p|| per leaf (~1e-3 is the usual rule of thumb)."""
    return self.update_norm / self.param_norm

  @property
  def global_grad_norm(self) -> jax.Array:
    """What ``optax.clip_by_global_norm`` compares."""
    return jnp.sqrt(jnp.sum(self.grad_norm**2))

  @property
  def global_update_norm(self) -> jax.Array:
    return jnp.sqrt(jnp.sum(self.update_norm**2))


def _inexact_leaves(tree) -> list:
  return [jnp.asarray(v) for v in jax.tree.leaves(tree)]


def step_norms(loss, grads, params, updates) -> StepNorms:
  """The ``norms`` tier of one step (inside jit; float32 vectors, one entry
  per parameter leaf). ``params`` are the parameters the step started from;
  ``updates`` what it added to them (optax's updates, or new - old)."""
  g, p, u = (_inexact_leaves(t) for t in (grads, params, updates))
  if not (len(g) == len(p) == len(u)):
    raise ValueError(f"expected grads, params and updates with the same leaves, got "
                     f"{len(g)}, {len(p)} and {len(u)}")
  vec = lambda f, leaves: jnp.stack([f(v) for v in leaves]) if leaves else jnp.zeros((0,))
  norms = [vec(leaf_norm, t).astype(jnp.float32) for t in (g, p, u)]

  def counts(_):  # a second pass, only on a step where some norm is not finite
    bad = lambda v: jnp.sum(~jnp.isfinite(v)).astype(jnp.int32)
    return vec(bad, g), vec(bad, p)
  clean = jnp.all(jnp.isfinite(norms[0])) & jnp.all(jnp.isfinite(norms[1]))
  zeros = jnp.zeros((len(g),), jnp.int32)
  grad_bad, param_bad = jax.lax.cond(clean, lambda _: (zeros, zeros), counts, None)
  return StepNorms(jnp.asarray(loss, jnp.float32), *norms, grad_bad, param_bad)


class RecorderState(NamedTuple):
  """The ring buffer and the triggers' state (a pytree of arrays).

  Attributes:
    steps: (K,) the step held in each slot, -1 where empty.
    norms: a :class:`StepNorms` with a leading (K,) axis.
    count: steps recorded so far.
    fired_step: the step of the first trigger, -1 while none has fired.
    reasons: its trigger bits (``NONFINITE | LOSS_SPIKE | UPDATE_JUMP``).
    new_trigger: True on the step a trigger first fired (the host's cue).
    health: the ``optimizer`` tier (:class:`AdamHealth` with a leading (K,)
      axis) when the recorder was made with ``adam=True``, else None.
    step_reasons: the trigger bits of the last recorded step, first or not
      (0: nothing fired there), for a host that marks every spike.
  """
  steps: jax.Array
  norms: StepNorms
  count: jax.Array
  fired_step: jax.Array
  reasons: jax.Array
  new_trigger: jax.Array
  health: AdamHealth | None = None
  step_reasons: jax.Array | None = None


def _masked_mean_std(values, valid):
  n = jnp.maximum(jnp.sum(valid), 1)
  mean = jnp.sum(jnp.where(valid, values, 0.0)) / n
  var = jnp.sum(jnp.where(valid, (values - mean) ** 2, 0.0)) / jnp.maximum(n - 1, 1)
  return mean, jnp.sqrt(var)


@dataclasses.dataclass(frozen=True)
class FlightRecorder:
  """The last ``window`` steps of :class:`StepNorms`, and when to raise the alarm.

  Attributes:
    window: K, the steps kept.
    spike_sigmas: a loss above the window's mean by this many of its standard
      deviations fires ``LOSS_SPIKE``.
    jump_factor: a global update norm above this multiple of the window's
      median fires ``UPDATE_JUMP``.
    warmup: steps recorded before the spike and jump triggers are armed (the
      non-finite one always is); ``None``: 10, or the window if shorter.
  """
  window: int = 64
  spike_sigmas: float = 6.0
  jump_factor: float = 10.0
  warmup: int | None = None

  def __post_init__(self):
    if self.warmup is None and isinstance(self.window, int):
      object.__setattr__(self, "warmup", max(2, min(10, self.window)))
    if not (isinstance(self.window, int) and self.window >= 2):
      raise ValueError(f"expected window >= 2, got {self.window!r}")
    if not (isinstance(self.warmup, int) and 2 <= self.warmup <= self.window):
      raise ValueError(f"expected 2 <= warmup <= window, got {self.warmup!r}")
    if not (self.spike_sigmas > 0 and self.jump_factor > 1):
      raise ValueError(f"expected spike_sigmas > 0 and jump_factor > 1, got "
                       f"{self.spike_sigmas} and {self.jump_factor}")

  def init(self, params, adam: bool = False) -> RecorderState:
    """An empty recorder for parameters shaped like ``params``; ``adam``: also
    keep the ``optimizer`` tier (:func:`adam_health`) of every step."""
    n = len(jax.tree.leaves(params))
    k = self.window
    zeros = lambda *s: jnp.zeros(s, jnp.float32)
    count = lambda *s: jnp.zeros(s, jnp.int32)
    norms = StepNorms(zeros(k), zeros(k, n), zeros(k, n), zeros(k, n), count(k, n), count(k, n))
    health = AdamHealth(*(zeros(k, n) for _ in AdamHealth._fields)) if adam else None
    return RecorderState(jnp.full((k,), -1, jnp.int32), norms, jnp.zeros((), jnp.int32),
                         jnp.full((), -1, jnp.int32), jnp.zeros((), jnp.int32),
                         jnp.zeros((), bool), health, jnp.zeros((), jnp.int32))

  def update(self, state: RecorderState, step, norms: StepNorms,
             health: AdamHealth | None = None) -> RecorderState:
    """Records ``norms`` (and ``health``, for a recorder made with
    ``adam=True``) as step ``step`` and evaluates the triggers against the
    steps held before it (inside jit, no host round trip)."""
    if (health is None) != (state.health is None):
      raise ValueError("expected health= exactly when the recorder was made with adam=True")
    held = state.steps >= 0
    loss_mean, loss_std = _masked_mean_std(state.norms.loss, held & jnp.isfinite(state.norms.loss))
    updates = jnp.sqrt(jnp.sum(state.norms.update_norm**2, axis=1))
    finite_updates = jnp.where(held & jnp.isfinite(updates), updates, jnp.nan)
    update_median = jnp.nanmedian(finite_updates)
    armed = state.count >= self.warmup
    # a norm that overflows float32 (finite entries, huge) counts too: clipping
    # or Adam's second moment turn it into NaN on the next step
    nonfinite = (~jnp.isfinite(norms.loss) | jnp.any(norms.grad_nonfinite > 0)
                 | jnp.any(norms.param_nonfinite > 0) | ~jnp.all(jnp.isfinite(norms.grad_norm))
                 | ~jnp.all(jnp.isfinite(norms.update_norm)))
    spike = armed & (norms.loss > loss_mean + self.spike_sigmas * jnp.maximum(
        loss_std, 1e-6 * jnp.abs(loss_mean)))
    jump = armed & (norms.global_update_norm > self.jump_factor * update_median)
    reasons = (jnp.where(nonfinite, NONFINITE, 0) | jnp.where(spike, LOSS_SPIKE, 0)
               | jnp.where(jump, UPDATE_JUMP, 0)).astype(jnp.int32)
    first = (reasons > 0) & (state.fired_step < 0)
    slot = state.count % self.window
    put = lambda buf, v: buf.at[slot].set(v.astype(buf.dtype))
    return RecorderState(
        steps=state.steps.at[slot].set(jnp.asarray(step, jnp.int32)),
        norms=jax.tree.map(put, state.norms, norms),
        count=state.count + 1,
        fired_step=jnp.where(first, jnp.asarray(step, jnp.int32), state.fired_step),
        reasons=jnp.where(first, reasons, state.reasons),
        new_trigger=first,
        health=None if health is None else jax.tree.map(put, state.health, health),
        step_reasons=reasons)
