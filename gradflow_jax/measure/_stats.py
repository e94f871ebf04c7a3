"""Per-layer activation and gradient statistics of the built-in MLP: pure,
jit-able, no host sync (its taps through ``_flow_pass``, reduced by ``_rows``)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradflow_jax.measure._norms import leaf_norm, norm_of_norms
from gradflow_jax.measure._rows import ActivationStats, Row, rows_stats
from gradflow_jax.models import _losses, _mlp
from gradflow_jax.models._config import MLPConfig

_norm = leaf_norm


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


def trace_stats(cfg: MLPConfig, trace: _mlp.Trace, slope=None) -> ActivationStats:
  """ActivationStats of an MLP trace (stacked (depth, ...) arrays or per-layer
  tuples): moments of a_l, saturation and dead units tested on z_l."""
  depth = len(trace.pre)
  slopes = [None] * depth if slope is None else [slope[l] for l in range(depth)]
  return rows_stats([Row(trace.post[l], trace.pre[l], cfg.act, slopes[l]) for l in range(depth)])


def flow_stats_fn(cfg: MLPConfig, params, x, y, loss: str) -> FlowStats:
  """Unjitted body of :func:`flow_stats` (for use inside a caller's jit)."""
  return probe(cfg, params, x, y, loss)[0]


def probe(cfg: MLPConfig, params, x, y, loss: str):
  """(FlowStats, parameter gradients) from one forward/backward pass (the
  built-in MLP's taps through ``_flow_pass``): what a training step needs to
  both log and update."""
  from gradflow_jax.capture import _probed as _probe
  from gradflow_jax.measure import _flow_pass
  model = _mlp.mlp_model(cfg, params)
  shapes = _probe.discover_taps(model, x).shapes
  pre = [f"layer_{l}/pre" for l in range(cfg.depth)]
  post = [f"layer_{l}/post" for l in range(cfg.depth)]

  def run(p, pt, how):
    out, taps = model.forward(p, x, pt, how=how)
    return _losses.loss_value(loss, out, y), taps
  fp = _flow_pass.forward_backward(run, params, shapes)
  value, gp = fp.loss, fp.grads
  tap_norms = fp.tap_grad_norms(pre + post)
  layers = gp["layers"]
  w_norm = jnp.stack([_norm(g["w"]) for g in layers])
  b_norm = jnp.stack([_norm(g["b"]) for g in layers])
  others = {k: v for k, v in gp.items() if k != "layers"}  # e.g. PReLU slopes
  grads = GradientStats(
      weight_grad_norm=w_norm,
      bias_grad_norm=b_norm,
      preact_grad_norm=tap_norms[:cfg.depth],
      postact_grad_norm=tap_norms[cfg.depth:],
      global_norm=jnp.sqrt(jnp.sum(w_norm**2) + jnp.sum(b_norm**2)
                           + norm_of_norms(jax.tree.map(_norm, others))**2),
      loss=value,
      nonfinite=~jnp.isfinite(w_norm + b_norm))
  trace = _mlp.Trace(tuple(fp.taps[n] for n in pre), tuple(fp.taps[n] for n in post), ())
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
