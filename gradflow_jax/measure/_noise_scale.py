"""The gradient noise scale: how large a batch is worth using. With G the
true gradient and Sigma the per-example gradient covariance, a batch of B
i.i.d. examples gives E|G_B|^2 = |G|^2 + tr(Sigma) / B; the simple noise
scale B_simple = tr(Sigma) / |G|^2 is the batch size at which the gradient
noise equals the signal: well below it, a larger batch speeds training
almost linearly; well above it, it mostly wastes compute.

Squared norms are in squared loss units per parameter unit (as |grad|^2);
B_simple is a number of examples.

References:
  McCandlish, Kaplan, Amodei et al. (2018), An empirical model of
  large-batch training, arXiv:1812.06162, section 2.2 and appendix A.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class NoiseScale(NamedTuple):
  """Unbiased estimates from one step (noisy: average over steps with
  :func:`noise_scale_over_window` before trusting the ratio).

  Attributes:
    grad_sq: () estimate of |G|^2, the squared norm of the true gradient
      (may come out negative when noise dominates).
    trace: () estimate of tr(Sigma), the per-example gradient variance
      summed over parameters (S in the paper).
    b_simple: () trace / grad_sq, the simple noise scale (examples).
    leaf_grad_sq: (L,) |G|^2 restricted to each leaf of
      ``jax.tree.leaves(params)`` (they sum to ``grad_sq``).
    leaf_trace: (L,) tr(Sigma) restricted to each leaf.
    leaf_b_simple: (L,) per-leaf (per-layer) noise scale.
  """
  grad_sq: jax.Array
  trace: jax.Array
  b_simple: jax.Array
  leaf_grad_sq: jax.Array
  leaf_trace: jax.Array
  leaf_b_simple: jax.Array


def _result(leaf_grad_sq, leaf_trace) -> NoiseScale:
  grad_sq, trace = jnp.sum(leaf_grad_sq), jnp.sum(leaf_trace)
  return NoiseScale(grad_sq, trace, trace / grad_sq, leaf_grad_sq, leaf_trace,
                    leaf_trace / leaf_grad_sq)


def _sq(tree) -> jax.Array:
  """(N, L) squared norm of each leaf (leading axis N kept)."""
  return jnp.stack([jnp.sum(x.reshape(x.shape[0], -1) ** 2, -1) for x in jax.tree.leaves(tree)],
                   -1)


def noise_scale_from_microbatches(grad_fn: Callable, params, batch,
                                  num_micro: int) -> NoiseScale:
  """Noise scale from one batch split into ``num_micro`` equal micro-batches
  along its leading axis (appendix A of McCandlish et al. 2018).

  With B_small = B / num_micro, |G_small|^2 the mean over micro-batches of
  their mean gradients' squared norms, and |G_big|^2 the squared norm of the
  whole batch's mean gradient (B_big = B):
  |G|^2 = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small) and
  tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big), both
  unbiased for i.i.d. examples. Per leaf, the same with the leaf's norms.

  Args:
    grad_fn: ``grad_fn(params, batch) -> grads``, the gradient of the batch
      mean loss (``jax.grad(loss_fn)``), a pytree like params.
    params: the parameters.
    batch: a pytree of arrays sharing a leading axis B, divisible by
      ``num_micro``.
    num_micro: micro-batches, >= 2 (one gradient each, vmapped).

  Returns:
    :class:`NoiseScale`.

  Raises:
    ValueError: num_micro < 2, or B not a multiple of it, or leaves with
      different leading axes.
  """
  sizes = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(batch)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"expected batch leaves with one leading axis B, got leading sizes {sizes}")
  b = sizes.pop()
  if not (isinstance(num_micro, int) and num_micro >= 2 and b % num_micro == 0):
    raise ValueError(f"expected num_micro an int >= 2 dividing the batch size {b}, "
                     f"got {num_micro!r}")
  split = jax.tree.map(lambda x: x.reshape((num_micro, b // num_micro) + x.shape[1:]), batch)
  grads = jax.vmap(grad_fn, (None, 0))(params, split)  # leaves (num_micro, ...)
  small_sq = jnp.mean(_sq(grads), 0)
  big_sq = _sq(jax.tree.map(lambda g: jnp.mean(g, 0)[None], grads))[0]
  small, big = b // num_micro, b
  grad_sq = (big * big_sq - small * small_sq) / (big - small)
  trace = (small_sq - big_sq) / (1 / small - 1 / big)
  return _result(grad_sq, trace)


def noise_scale_from_per_example(per_example_grads) -> NoiseScale:
  """Noise scale from per-example gradients (leaves with a leading axis B >=
  2, e.g. ``jax.vmap(jax.grad(loss_fn), (None, 0))`` over the examples):
  tr(Sigma) the sum over coordinates of the sample variance (ddof=1) and
  |G|^2 = |mean g|^2 - tr(Sigma) / B, both exactly unbiased for i.i.d.
  examples.

  Raises:
    ValueError: leaves without one shared leading axis B >= 2.
  """
  sizes = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(per_example_grads)}
  if len(sizes) != 1 or None in sizes or next(iter(sizes)) < 2:
    raise ValueError("expected per-example gradients with one leading axis B >= 2, "
                     f"got leading sizes {sizes}")
  b = sizes.pop()
  trace = jnp.stack([jnp.sum(jnp.var(g, 0, ddof=1)) for g in jax.tree.leaves(per_example_grads)])
  mean_sq = _sq(jax.tree.map(lambda g: jnp.mean(g, 0)[None], per_example_grads))[0]
  return _result(mean_sq - trace / b, trace)


class WindowNoiseScale(NamedTuple):
  """B_simple from a window of steps.

  Attributes:
    b_simple: mean tr(Sigma) / mean |G|^2 over the valid steps (the ratio of
      means: the paper's recommendation, since the mean of ratios of noisy
      estimates is biased).
    stderr: its delta-method standard error, treating the steps as
      independent (consecutive steps are correlated, so read it as a lower
      bound); NaN with fewer than 2 valid steps.
    count: how many steps were valid.
  """
  b_simple: jax.Array
  stderr: jax.Array
  count: jax.Array


def noise_scale_over_window(grad_sq: jax.Array, trace: jax.Array,
                            valid: jax.Array | None = None) -> WindowNoiseScale:
  """Combines per-step estimates (``grad_sq``, ``trace``, leading axis =
  steps, any trailing shape: e.g. (steps,) global or (steps, L) per leaf)
  into B_simple with a standard error. ``valid`` (steps,) bool masks steps
  out (a ring buffer not yet full, a non-finite step); non-finite steps are
  masked out too.

  With means g, s of grad_sq, trace over m steps, R = s / g and
  Var(R) ~ (Var(s) - 2 R Cov(s, g) + R^2 Var(g)) / (m g^2) (the delta
  method).
  """
  grad_sq, trace = jnp.asarray(grad_sq), jnp.asarray(trace)
  if grad_sq.shape != trace.shape or grad_sq.ndim < 1:
    raise ValueError("expected grad_sq and trace of one shape (steps, ...), got "
                     f"{grad_sq.shape} and {trace.shape}")
  steps = grad_sq.shape[0]
  valid = jnp.ones((steps,), bool) if valid is None else jnp.asarray(valid, bool)
  if valid.shape != (steps,):
    raise ValueError(f"expected valid of shape ({steps},), got {valid.shape}")
  valid = valid.reshape((steps,) + (1,) * (grad_sq.ndim - 1))
  valid = valid & jnp.isfinite(grad_sq) & jnp.isfinite(trace)
  m = jnp.sum(valid, 0, keepdims=True)
  mean = lambda x: jnp.sum(jnp.where(valid, x, 0), 0, keepdims=True) / m
  g, s = mean(grad_sq), mean(trace)
  dg, ds = jnp.where(valid, grad_sq - g, 0), jnp.where(valid, trace - s, 0)
  cov = lambda a, b: jnp.sum(a * b, 0, keepdims=True) / (m - 1)
  ratio = s / g
  var = (cov(ds, ds) - 2 * ratio * cov(ds, dg) + ratio**2 * cov(dg, dg)) / (m * g**2)
  stderr = jnp.where(m >= 2, jnp.sqrt(jnp.maximum(var, 0)), jnp.nan)
  return WindowNoiseScale(ratio[0], stderr[0], m[0])
