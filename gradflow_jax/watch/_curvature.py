"""The ``curvature`` and ``noise`` tiers of a training step, every N steps
inside jit: the loss's sharpness against the stability threshold of the
optimizer (warm-started Lanczos, :mod:`gradflow_jax.measure._hessian`), each
parameter leaf's own sharpness, Adam's preconditioned sharpness, and the
gradient noise scale B_simple from micro-batches of the step's batch, averaged
over a window (:mod:`gradflow_jax.measure._noise_scale`).

  curvature = gf.watch.Curvature(every=10)
  c = curvature.init(params)
  ...inside the jitted step, with the step's batch (or a fixed probe batch):
  c = curvature.update(c, loss_fn, params, batch, step, lr=1e-3)
  # c.sharpness against c.threshold (2 / lr), c.converged; c.measured

A value that did not converge keeps ``converged`` False: log and plot it as
such, never as a measurement.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from gradflow_jax.measure import _hessian, _noise_scale, _stability
from gradflow_jax.watch._optimizer import find_adam_state


def learning_rate(opt_state, lr=None, step=None) -> jax.Array:
  """The learning rate of a step: ``lr`` (a number, or a schedule called
  with ``step``), else the one ``optax.inject_hyperparams`` holds in
  ``opt_state``.

  Raises:
    ValueError: no ``lr`` and none (or several) in the state.
  """
  if lr is not None:
    return jnp.asarray(lr(step) if callable(lr) else lr, jnp.float32)
  has = lambda x: isinstance(getattr(x, "hyperparams", None), dict)
  found = [x.hyperparams["learning_rate"] for x in jax.tree.leaves(opt_state, is_leaf=has)
           if has(x) and "learning_rate" in x.hyperparams]
  if len(found) != 1:
    raise ValueError(f"expected lr= (a number or schedule) or one optax.inject_hyperparams "
                     f"learning_rate in the optimizer state, got {len(found)}")
  return jnp.asarray(found[0], jnp.float32)


class CurvatureState(NamedTuple):
  """The last measurement and the vectors the next one starts from.

  Attributes:
    sharpness: the loss Hessian's top eigenvalue (NaN before the first).
    converged: whether it converged (Lanczos error bound within ``tol``).
    threshold: the optimizer's stability threshold at that step: 2 / lr for
      gradient descent, (2 + 2 momentum) / lr with heavy-ball momentum, or
      (2 + 2 b1) / ((1 - b1) lr) (38 / lr at b1 = 0.9) for Adam's
      preconditioned sharpness (Cohen et al. 2021; 2022).
    preconditioned: the top eigenvalue of P^-1 H, P Adam's preconditioner
      (1 - b1^t)(sqrt(v-hat) + eps) (NaN without ``adam=True``).
    preconditioned_converged: its flag.
    blocks: (L,) each parameter leaf's own sharpness (its diagonal block of
      H; NaN without ``blocks=True``); ``blocks_converged`` their flags.
    step: the step measured last (-1: none yet).
    measured: True on a step that measured (the host's cue to log).
    vector, preconditioned_vector, block_vector: warm starts.
  """
  sharpness: jax.Array
  converged: jax.Array
  threshold: jax.Array
  preconditioned: jax.Array
  preconditioned_converged: jax.Array
  blocks: jax.Array
  blocks_converged: jax.Array
  step: jax.Array
  measured: jax.Array
  vector: object
  preconditioned_vector: object
  block_vector: object

  @property
  def ratio(self) -> jax.Array:
    """The measured sharpness over its threshold (Adam: the preconditioned
    one): near 1 at the edge of stability, above 1 unstable."""
    top = jnp.where(jnp.isnan(self.preconditioned), self.sharpness, self.preconditioned)
    return top / self.threshold


@dataclasses.dataclass(frozen=True)
class Curvature:
  """Sharpness every ``every`` steps by ``steps`` Lanczos steps on
  Hessian-vector products, each warm-started from the last top vector.

  Attributes:
    every: measure on steps with ``step % every == 0`` (a ``lax.cond``: the
      other steps pay nothing but the branch).
    steps: Lanczos steps (Hessian-vector products, each about two gradients).
    tol: relative tolerance of the converged flags.
    blocks: also each leaf's own sharpness (one more HVP per leaf and step).
    adam: also Adam's preconditioned sharpness (needs ``opt_state``); the
      threshold is then Adam's.
    momentum: heavy-ball momentum of SGD, for its threshold.
  """
  every: int = 10
  steps: int = 20
  tol: float = 1e-3
  blocks: bool = False
  adam: bool = False
  momentum: float = 0.0

  def __post_init__(self):
    for name in ("every", "steps"):
      v = getattr(self, name)
      if not (isinstance(v, int) and v >= 1):
        raise ValueError(f"expected {name} >= 1, got {v!r}")
    if not 0 < self.tol < 1:
      raise ValueError(f"expected 0 < tol < 1, got {self.tol}")

  def init(self, params, key=None) -> CurvatureState:
    """No measurement yet; random unit start vectors from ``key``."""
    key = jax.random.key(0) if key is None else key
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, 2 * max(len(leaves), 1))
    start = lambda ks: jax.tree.unflatten(tree, [
        jax.random.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(ks, leaves)])
    n = len(leaves)
    nan, false = jnp.full((), jnp.nan, jnp.float32), jnp.zeros((), bool)
    vector = start(keys[:n])
    return CurvatureState(
        nan, false, nan, nan, false, jnp.full((n,), jnp.nan, jnp.float32), jnp.zeros((n,), bool),
        jnp.full((), -1, jnp.int32), false, vector, start(keys[n:]) if self.adam else None,
        vector if self.blocks else None)

  def update(self, state: CurvatureState, loss_fn: Callable, params, batch, step, *,
             lr=None, opt_state=None, b1: float = 0.9, b2: float = 0.999,
             eps: float = 1e-8) -> CurvatureState:
    """Measures on every ``every``-th ``step`` (inside jit), else returns
    ``state`` with ``measured`` False.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the loss the step
        differentiates.
      batch: the step's batch, or a fixed probe batch.
      lr: the learning rate (number or schedule of the step); default: from
        ``optax.inject_hyperparams`` in ``opt_state``.
      opt_state: the optimizer state after the step's update (Adam's moments
        for ``adam=True``; ``b1, b2, eps`` are the optimizer's own).
    """
    if self.adam and opt_state is None:
      raise ValueError("expected opt_state= (Adam's moments) with Curvature(adam=True)")
    rate = learning_rate(opt_state, lr, step)
    step = jnp.asarray(step, jnp.int32)

    def measure(state):
      top = _hessian.hessian_top(loss_fn, params, batch, steps=self.steps, tol=self.tol,
                                 v0=state.vector)
      out = state._replace(sharpness=top.eigenvalues[0].astype(jnp.float32),
                           converged=top.converged[0], vector=top.vector, step=step,
                           measured=jnp.ones((), bool))
      if self.adam:
        p = _stability.adam_preconditioner(find_adam_state(opt_state), b1, b2, eps)
        pre = _stability.preconditioned_sharpness(loss_fn, params, batch, p, steps=self.steps,
                                                  tol=self.tol, v0=state.preconditioned_vector)
        out = out._replace(preconditioned=pre.eigenvalues[0].astype(jnp.float32),
                           preconditioned_converged=pre.converged[0],
                           preconditioned_vector=pre.vector,
                           threshold=_stability.adam_stability_threshold(rate, b1))
      else:
        out = out._replace(threshold=_stability.stability_threshold(rate, self.momentum))
      if self.blocks:
        blocks = _hessian.block_sharpness(loss_fn, params, batch, steps=self.steps,
                                          tol=self.tol, v0=state.block_vector)
        out = out._replace(blocks=blocks.eigenvalues.astype(jnp.float32),
                           blocks_converged=blocks.converged, block_vector=blocks.vector)
      return jax.tree.map(lambda new, old: jnp.asarray(new, jnp.result_type(old)), out, state)

    skip = lambda state: state._replace(measured=jnp.zeros((), bool))
    return jax.lax.cond(step % self.every == 0, measure, skip, state)


class NoiseState(NamedTuple):
  """Per-step estimates in a ring buffer of ``window`` measurements, and the
  window's B_simple.

  Attributes:
    grad_sq, trace: (W,) the unbiased |G|^2 and tr(Sigma) of each measured
      step (NaN where empty); ``leaf_grad_sq``, ``leaf_trace``: (W, L).
    b_simple: tr(Sigma) / |G|^2 over the window (ratio of means, in
      examples: the batch size where the gradient noise equals the signal);
      ``stderr``: its delta-method standard error (steps taken as
      independent: a lower bound); ``leaf_b_simple``: (L,) per leaf.
    count: measurements so far; ``measured``: True on a step that measured.
  """
  grad_sq: jax.Array
  trace: jax.Array
  leaf_grad_sq: jax.Array
  leaf_trace: jax.Array
  b_simple: jax.Array
  stderr: jax.Array
  leaf_b_simple: jax.Array
  count: jax.Array
  measured: jax.Array


@dataclasses.dataclass(frozen=True)
class GradientNoise:
  """B_simple (McCandlish et al. 2018) every ``every`` steps from ``micro``
  micro-batches of the step's batch (``micro`` gradients, vmapped), or with
  ``per_example=True`` from every example's own gradient (exactly unbiased,
  B gradients: ``loss_fn`` must then take a batch of one example), averaged
  over the last ``window`` measurements."""
  every: int = 10
  micro: int = 4
  window: int = 16
  per_example: bool = False

  def __post_init__(self):
    if not (isinstance(self.every, int) and self.every >= 1):
      raise ValueError(f"expected every >= 1, got {self.every!r}")
    if not (isinstance(self.micro, int) and self.micro >= 2):
      raise ValueError(f"expected micro >= 2 micro-batches, got {self.micro!r}")
    if not (isinstance(self.window, int) and self.window >= 2):
      raise ValueError(f"expected window >= 2, got {self.window!r}")

  def init(self, params) -> NoiseState:
    n, w = len(jax.tree.leaves(params)), self.window
    nan = lambda *s: jnp.full(s, jnp.nan, jnp.float32)
    return NoiseState(nan(w), nan(w), nan(w, n), nan(w, n), nan(), nan(), nan(n),
                      jnp.zeros((), jnp.int32), jnp.zeros((), bool))

  def update(self, state: NoiseState, loss_fn: Callable, params, batch, step) -> NoiseState:
    """Measures on every ``every``-th step (inside jit); ``batch``'s leading
    axis must be a multiple of ``micro`` (or at least 2, per example)."""
    def measure(state):
      if self.per_example:
        one = lambda example: jax.grad(loss_fn)(params, jax.tree.map(lambda x: x[None], example))
        est = _noise_scale.noise_scale_from_per_example(jax.vmap(one)(batch))
      else:
        est = _noise_scale.noise_scale_from_microbatches(jax.grad(loss_fn), params, batch,
                                                        self.micro)
      slot = state.count % self.window
      put = lambda buf, v: buf.at[slot].set(jnp.asarray(v, jnp.float32))
      grad_sq, trace = put(state.grad_sq, est.grad_sq), put(state.trace, est.trace)
      leaf_g, leaf_t = put(state.leaf_grad_sq, est.leaf_grad_sq), put(state.leaf_trace,
                                                                         est.leaf_trace)
      total = _noise_scale.noise_scale_over_window(grad_sq, trace)
      leaves = _noise_scale.noise_scale_over_window(leaf_g, leaf_t)
      return NoiseState(grad_sq, trace, leaf_g, leaf_t, total.b_simple.astype(jnp.float32),
                        total.stderr.astype(jnp.float32),
                        leaves.b_simple.astype(jnp.float32), state.count + 1,
                        jnp.ones((), bool))

    skip = lambda state: state._replace(measured=jnp.zeros((), bool))
    return jax.lax.cond(jnp.asarray(step) % self.every == 0, measure, skip, state)
