"""Per-layer activation and gradient statistics: pure, jit-able, no host sync."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradflow_jax import _losses, _mlp
from gradflow_jax._config import MLPConfig


class ActivationStats(NamedTuple):
  """Per hidden layer, each of shape (depth,).

  Attributes:
    mean, std, min, max: of the activations a_l over every unit-example pair
      (finite entries only; std is the sample std, ddof=1, as ``torch.std``).
      Healthy: std of order 1/3 to 1, not shrinking or growing with depth.
    saturation_fraction: share of unit-example pairs whose pre-activation is in
      a flat tail (``Activation.is_saturated``); above ~0.1 gradients suffer.
    dead_fraction: share of units inactive (zero derivative) on every example.
    zero_fraction: share of unit-example pairs with an activation of exactly 0.
    nonfinite: number of NaN/Inf entries in z_l or a_l.
  """
  mean: jax.Array
  std: jax.Array
  min: jax.Array
  max: jax.Array
  saturation_fraction: jax.Array
  dead_fraction: jax.Array
  zero_fraction: jax.Array
  nonfinite: jax.Array


class GradientStats(NamedTuple):
  """Gradient norms (L2/Frobenius) of one loss on one batch.

  Attributes:
    weight_grad_norm, bias_grad_norm: (n_dense,) ||dL/dW|| and ||dL/db|| per
      dense layer in ``params["layers"]`` order (depth+1 for a plain MLP).
    preact_grad_norm: (depth,) ||dL/dz_l|| over the batch, the backward signal
      arriving at each hidden layer. Shrinking toward layer 0: vanishing.
    postact_grad_norm: (depth,) ||dL/da_l||.
    global_norm: sqrt of the sum of squares of all parameter gradients
      (``optax.tree.norm``, formerly ``optax.global_norm``), what ``clip_by_global_norm`` compares.
    loss: the loss value.
    nonfinite: (n_dense,) bool, True where dL/dW or dL/db holds a NaN/Inf (or
      is so large that its norm overflows).
  """
  weight_grad_norm: jax.Array
  bias_grad_norm: jax.Array
  preact_grad_norm: jax.Array
  postact_grad_norm: jax.Array
  global_norm: jax.Array
  loss: jax.Array
  nonfinite: jax.Array


class FlowStats(NamedTuple):
  """Activation and gradient statistics from one forward/backward pass."""
  activations: ActivationStats
  gradients: GradientStats


def _slopes(cfg: MLPConfig, params):
  return tuple(params["prelu"]) if cfg.activation == "prelu" else None


def _count(mask, dtype):
  """Number of True entries. Summed as floats (exact below 2**24 entries) when
  that is exact: XLA:CPU reduces floats with vectorized kernels and integers
  with a slow generic loop (measured 2-3x slower per reduction)."""
  if mask.size < 2**24:
    return jnp.sum(mask.astype(dtype))
  return jnp.sum(mask, dtype=jnp.int32).astype(dtype)


def _moments(post):
  """mean, std (ddof=1), min, max of one layer over its finite entries, and
  the number of finite entries, in one pass.

  Sums are shifted by one sample of the layer, so that the variance does not
  cancel when the mean is large against the spread (a collapsed sigmoid layer).
  """
  finite = jnp.isfinite(post)
  flat = post.reshape(-1)
  shift = jnp.where(jnp.isfinite(flat[0]), flat[0], 0)
  d = jnp.where(finite, post - shift, 0)
  n = _count(finite, post.dtype)
  s1 = jnp.sum(d)
  s2 = jnp.sum(d * d)
  mean_d = s1 / n
  var = jnp.maximum(s2 - s1 * mean_d, 0) / (n - 1)
  big = jnp.asarray(jnp.inf, post.dtype)
  return (mean_d + shift, jnp.sqrt(var), jnp.min(jnp.where(finite, post, big)),
          jnp.max(jnp.where(finite, post, -big))), n


def _dead_fraction(inactive):
  """Share of units (last axis) inactive on every example (float min over the
  examples: the fast reduction, see ``_count``)."""
  units = inactive.reshape(-1, inactive.shape[-1]).astype(jnp.float32)
  return jnp.mean(jnp.min(units, axis=0))


class Row(NamedTuple):
  """One layer or tap for the statistics body.

  ``values`` are described (moments, zero fraction); ``tested`` (the
  activation's input) gets ``act``'s saturation and dead-unit tests. Without an
  activation, saturation is NaN and a dead unit is one whose value is exactly 0
  on every example. ``tested`` may be ``values`` itself.
  """
  values: jax.Array
  tested: jax.Array
  act: object = None
  slope: object = None


def _tests(row: Row, dtype, size):
  if row.act is None:
    return jnp.asarray(jnp.nan, dtype), _dead_fraction(row.values == 0)
  return (_count(row.act.is_saturated(row.tested), dtype) / size,
          _dead_fraction(row.act.is_inactive(row.tested, row.slope)))


def _masked_row(row: Row):
  """Statistics of one row over its finite entries, in ActivationStats order."""
  values = _acc(row.values)
  (mean, std, vmin, vmax), _ = _moments(values)
  bad = ~jnp.isfinite(values)
  if row.tested is not row.values:
    bad = bad | ~jnp.isfinite(row.tested)
  sat, dead = _tests(row, values.dtype, values.size)
  return (mean, std, vmin, vmax, sat, dead, _count(values == 0, values.dtype) / values.size,
          _count(bad, values.dtype).astype(jnp.int32))


def _finite_row(row: Row, shift, s1):
  """``_masked_row`` of a row known to hold no NaN/Inf: the same sums without
  the finiteness masks, which cost a pass over the tensor each."""
  values = _acc(row.values)
  d = values - shift
  s2 = jnp.sum(d * d)
  n = values.size
  mean_d = s1 / n
  var = jnp.maximum(s2 - s1 * mean_d, 0) / (n - 1)
  sat, dead = _tests(row, values.dtype, n)
  return (mean_d + shift, jnp.sqrt(var), jnp.min(values), jnp.max(values), sat, dead,
          _count(values == 0, values.dtype) / n, jnp.zeros((), jnp.int32))


def rows_stats(rows: list[Row]) -> ActivationStats:
  """ActivationStats of every row, stacked (one entry per row).

  A plain sum is NaN/Inf whenever one of its entries is, so when every row's
  sums are finite the statistics skip the per-entry finiteness masks (exact
  either way; the masked path runs otherwise).
  """
  shifts = [_acc(r.values).reshape(-1)[0] for r in rows]
  s1 = [jnp.sum(_acc(r.values) - c) for r, c in zip(rows, shifts)]
  tested_sums = [jnp.sum(_acc(r.tested)) for r in rows if r.tested is not r.values]
  all_finite = jnp.all(jnp.isfinite(jnp.stack(s1 + tested_sums)))

  def stacked(per_row):
    return ActivationStats(*(jnp.stack(column) for column in zip(*per_row)))

  def finite():
    return stacked([_finite_row(r, c, t) for r, c, t in zip(rows, shifts, s1)])

  def masked():
    return stacked([_masked_row(r) for r in rows])
  return jax.lax.cond(all_finite, finite, masked)


def trace_stats(cfg: MLPConfig, trace: _mlp.Trace, slope=None) -> ActivationStats:
  """ActivationStats of an MLP trace (stacked (depth, ...) arrays or per-layer
  tuples): moments of a_l, saturation and dead units tested on z_l."""
  depth = len(trace.pre)
  slopes = [None] * depth if slope is None else [slope[l] for l in range(depth)]
  return rows_stats([Row(trace.post[l], trace.pre[l], cfg.act, slopes[l]) for l in range(depth)])


def _acc(x):
  """At least float32, for sums over many entries (bfloat16 inputs)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def leaf_norm(x):
  """||x|| of one array, accumulated in at least float32."""
  x = _acc(x)
  return jnp.sqrt(jnp.sum(x * x))


_norm = leaf_norm


def flow_stats_fn(cfg: MLPConfig, params, x, y, loss: str) -> FlowStats:
  """Unjitted body of :func:`flow_stats` (for use inside a caller's jit)."""
  return probe(cfg, params, x, y, loss)[0]


def probe(cfg: MLPConfig, params, x, y, loss: str):
  """(FlowStats, parameter gradients) from one forward/backward pass: what a
  training step needs to both log and update."""
  perturb = _mlp.zero_perturb(cfg, x.shape[:-1])

  def objective(params, perturb):
    out, trace = _mlp.mlp_apply(cfg, params, x, perturb, stack=False)
    return _losses.loss_value(loss, out, y), trace

  (value, trace), (gp, gz) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
      params, perturb)
  layers = gp["layers"]
  w_norm = jnp.stack([_norm(g["w"]) for g in layers])
  b_norm = jnp.stack([_norm(g["b"]) for g in layers])
  grads = GradientStats(
      weight_grad_norm=w_norm,
      bias_grad_norm=b_norm,
      preact_grad_norm=jnp.stack([_norm(g) for g in gz.pre]),
      postact_grad_norm=jnp.stack([_norm(g) for g in gz.post]),
      global_norm=optax.tree.norm(gp),
      loss=value,
      nonfinite=~jnp.isfinite(w_norm + b_norm))
  return FlowStats(trace_stats(cfg, trace, _slopes(cfg, params)), grads), gp


@functools.partial(jax.jit, static_argnums=(0, 4))
def _flow_stats_jit(cfg, params, x, y, loss):
  return flow_stats_fn(cfg, params, x, y, loss)


@functools.partial(jax.jit, static_argnums=0)
def _activation_stats_jit(cfg, params, x):
  _, trace = _mlp.mlp_apply(cfg, params, x, stack=False)
  return trace_stats(cfg, trace, _slopes(cfg, params))


def _check(cfg, params, x, y=None, loss=None):
  if not isinstance(cfg, MLPConfig):
    raise TypeError(f"expected an MLPConfig, got {type(cfg).__name__}")
  _mlp.check_params(cfg, params)
  _mlp.check_inputs(cfg, x)
  if loss is not None:
    batch = x.shape[0] if len(x.shape) == 2 else None
    if batch is None:
      raise ValueError(f"expected a batch of inputs (batch, {cfg.in_dim}), got {tuple(x.shape)}")
    _losses.check_targets(loss, y, batch, cfg.out_dim)


def activation_stats(cfg: MLPConfig, params, x: jax.Array) -> ActivationStats:
  """Per-hidden-layer activation statistics on a batch ``x`` (batch, in_dim).

  Example:
    >>> cfg = MLPConfig(in_dim=128, width=256, depth=10, out_dim=10, activation="tanh")
    >>> params = init_mlp(jax.random.key(0), cfg)
    >>> s = activation_stats(cfg, params, jax.random.normal(jax.random.key(1), (64, 128)))
    >>> s.std.shape
    (10,)
  """
  x = jnp.asarray(x)
  _check(cfg, params, x)
  return _activation_stats_jit(cfg, params, x)


def gradient_stats(cfg: MLPConfig, params, x: jax.Array, y: jax.Array,
                   loss: str = "cross_entropy") -> GradientStats:
  """Per-layer gradient norms of ``loss`` on the batch (x, y)."""
  return flow_stats(cfg, params, x, y, loss).gradients


def flow_stats(cfg: MLPConfig, params, x: jax.Array, y: jax.Array,
               loss: str = "cross_entropy") -> FlowStats:
  """Activation and gradient statistics from one jitted forward/backward pass.

  Args:
    cfg: the model configuration.
    params: parameters from :func:`init_mlp` or :func:`load_npz`.
    x: (batch, in_dim) inputs.
    y: (batch,) integer labels for ``cross_entropy``; (batch, out_dim) targets
      for ``mse``.
    loss: ``"cross_entropy"`` or ``"mse"``.

  Returns:
    :class:`FlowStats` of arrays; nothing is transferred to the host.
  """
  x = jnp.asarray(x)
  _check(cfg, params, x, y, loss)
  return _flow_stats_jit(cfg, params, x, jnp.asarray(y), loss)


def first_nonfinite_layer(counts: jax.Array) -> jax.Array:
  """Index of the first layer with a non-zero count, or -1 if there is none."""
  hit = counts > 0
  return jnp.where(jnp.any(hit), jnp.argmax(hit), -1)


def histograms(cfg: MLPConfig, params, x: jax.Array, bins: int = 50,
               value_range: tuple[float, float] = (-3.0, 3.0)):
  """Per-layer histograms of the activations: counts (depth, bins) and edges.

  Values outside ``value_range`` are not counted; NaN is never counted.
  """
  x = jnp.asarray(x)
  _check(cfg, params, x)
  return _histograms_jit(cfg, params, x, int(bins), tuple(map(float, value_range)))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _histograms_jit(cfg, params, x, bins, value_range):
  _, trace = _mlp.mlp_apply(cfg, params, x)
  edges = jnp.linspace(value_range[0], value_range[1], bins + 1)
  flat = trace.post.reshape(cfg.depth, -1)
  counts = jax.vmap(lambda v: jnp.histogram(v, bins=edges)[0])(flat)
  return counts, edges
