"""Statistics of any probed model: per tap, the activation statistics and the
gradient arriving there, from one jitted forward/backward pass."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax.capture import _probed as _probe
from gradflow_jax.measure import _flow_pass
from gradflow_jax.models import _activations, _losses
from gradflow_jax.measure._norms import grouped_norms, norm_of_norms
from gradflow_jax.measure._rows import ActivationStats, Row, rows_stats


class ModelFlowStats(NamedTuple):
  """Per tap (in the order the model records them), each array (n_taps,).

  Attributes:
    names: tap names.
    roles: per tap ``"pre"`` (a layer's output), ``"post"`` (a layer's input)
      or ``"tap"``.
    activation_names: per tap the activation known to follow it, or ``None``.
    activations: :class:`ActivationStats` of the tapped tensors themselves.
      Saturation and dead fractions use the activation's tests where one is
      known (the tap being its input); otherwise saturation is NaN and a dead
      unit is one whose value is exactly 0 on every example.
    tap_grad_norm: ||dL/d tap||, the backward signal at each tap.
    param_grad_norms: a pytree like the parameters, ||dL/dp|| per leaf.
    global_norm: ``optax.tree.norm`` of all parameter gradients.
    loss: the loss value.
  """
  names: tuple[str, ...]
  roles: tuple[str, ...]
  activation_names: tuple
  activations: ActivationStats
  tap_grad_norm: jax.Array
  param_grad_norms: Any
  global_norm: jax.Array
  loss: jax.Array

  def as_dict(self) -> dict:
    """The results.json layout: per tap its name, role and activation, the
    statistics (one list per field, in tap order), ||dL/d tap||, the global
    gradient norm and the loss."""
    return {"taps": list(self.names), "roles": list(self.roles),
            "activation_names": list(self.activation_names),
            "activation_stats": self.activations, "tap_grad_norm": self.tap_grad_norm,
            "global_norm": self.global_norm, "loss": self.loss}


def loss_fn(loss):
  """``loss(output, y) -> scalar`` from a name or a callable."""
  if callable(loss):
    return loss
  _losses.check_loss_name(loss)
  return _named_loss(loss)


@functools.cache
def _named_loss(loss: str):
  """One function object per loss name, so jit's cache (keyed on it) hits."""
  return lambda out, y: _losses.loss_value(loss, out, y)


def flow_body(forward, params, x, y, loss, info: tuple[_probe.TapInfo, ...], shapes):
  """The unjitted statistics body (call it inside your own jit):
  ``(ActivationStats, tap grad norms, per-leaf grad norms, global norm, loss,
  parameter gradients)``. ``info``/``shapes`` come from :func:`discover`."""
  names = [i.name for i in info]

  def run(p, pt, how):
    out, taps = forward(p, x, pt, how=how)
    return loss(out, y), taps
  # only ||dL/d tap|| is needed: computed in the backward pass itself
  fp = _flow_pass.forward_backward(run, params, {n: shapes[n] for n in names}, norms=True)
  value, taps, gp, gt = fp.loss, fp.taps, fp.grads, fp.tap_grads
  stats, tap_norms, leaf_norms = tap_statistics(info, taps, gp, tap_grad_squares=gt)
  return stats, tap_norms, leaf_norms, norm_of_norms(leaf_norms), value, gp


def tap_statistics(info: tuple[_probe.TapInfo, ...], taps: dict, grads, *, tap_grads=None,
                   tap_grad_squares=None):
  """(ActivationStats per tap, ||dL/d tap|| per tap, per-leaf ||dL/dp||) of
  one forward/backward pass, from ``tap_grads`` (dL/d tap per tap) or, when
  they are None, ``tap_grad_squares`` (||dL/d tap||^2 per tap, see
  ``_probe.norm_slots``, in its layout). The layers of a scanned tap are reduced as the
  scan's stacked output (see ``Row.family``), small tensors of one shape
  together."""
  families = [_probe.family(i.name) for i in info]
  rows = [Row(taps[i.name], taps[i.name],
              _activations.get_activation(i.activation) if i.activation else None, family=f)
          for i, f in zip(info, families)]
  stats = (rows_stats(rows) if rows else
           ActivationStats(*[jnp.zeros((0,), jnp.float32)] * 7, jnp.zeros((0,), jnp.int32),
                           jnp.zeros((0,), jnp.float32)))
  if tap_grads is not None:
    tap_norms = grouped_norms([tap_grads[i.name] for i in info], families)
  else:
    tap_norms = jnp.sqrt(_probe.slot_values(tap_grad_squares, [i.name for i in info]))
  leaves, treedef = jax.tree.flatten(grads)
  norms = grouped_norms(leaves, [None] * len(leaves))
  return stats, tap_norms, jax.tree.unflatten(treedef, [norms[k] for k in range(len(leaves))])


def discover(model: _probe.ProbedModel, x):
  """(tap infos in order, tap shapes) of ``model`` on ``x``.

  Raises:
    ValueError: the model records no taps, or activations are named for taps
      it does not have.
  """
  found = _probe.discover_taps(model, x)
  if not found.shapes:
    raise ValueError("expected at least one tapped layer (Dense/Linear/Conv/Embed layers, or "
                     "gradflow_jax.tap calls), got none")
  _probe.check_tap_names(dict(model.activations), found.shapes)
  return tuple(found.info[n] for n in found.shapes), found.shapes


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _flow_jit(forward, params, x, y, loss, info):
  shapes = _probe.discover_taps(_probe.ProbedModel(forward, params), x).shapes
  return flow_body(forward, params, x, y, loss, info, shapes)[:5]


def model_flow_stats(model: _probe.ProbedModel, x, y, loss="cross_entropy",
                     activations: dict[str, str] | None = None) -> ModelFlowStats:
  """Activation and gradient statistics of every tap from one jitted pass.

  Args:
    model: a :class:`ProbedModel` (``gf.from_linen``, ``gf.from_nnx``,
      ``gf.probed``, ``gf.mlp_model``).
    x, y: a batch (any pytree the model takes: floats, integer tokens, dicts)
      and its targets.
    loss: ``"cross_entropy"``, ``"mse"`` or ``loss(output, y) -> scalar``.
    activations: optional {tap name: activation name} for taps that are an
      activation's input, added to ``model.activations``.
  """
  if activations:
    for v in activations.values():
      _activations.get_activation(v)
    model = model.with_activations(activations)
  info, _ = discover(model, x)
  stats, tap_norms, leaf_norms, gnorm, value = _flow_jit(
      model.forward, model.params, x, y, loss_fn(loss), info)
  return ModelFlowStats(tuple(i.name for i in info), tuple(i.role for i in info),
                        tuple(i.activation for i in info), stats, tap_norms, leaf_norms, gnorm,
                        value)


# --- activations from the taps themselves -----------------------------------------------

_CANDIDATES = ("identity", "relu", "leaky_relu", "elu", "selu", "gelu", "gelu_tanh", "silu",
               "softplus", "sigmoid", "tanh")
INFER_TOLERANCE = 1e-4  # relative to the largest |activation|: float32 ops agree to ~1e-6


@functools.partial(jax.jit, static_argnums=(0, 2))
def _pair_values(forward, params, pairs, x):
  """The (pre, post) tap values of every pair, flattened and concatenated."""
  _, taps = forward(params, x, None)
  flat = lambda names: jnp.concatenate([taps[n].astype(jnp.float32).reshape(-1) for n in names])
  return flat([p for p, _ in pairs]), flat([q for _, q in pairs])


@jax.jit
def _candidate_values(z):
  return jnp.stack([_activations.get_activation(name)(z, None) for name in _CANDIDATES])


def infer_activations(model: _probe.ProbedModel, x, max_examples: int = 16) -> dict[str, str]:
  """Which activation follows each ``pre`` tap, read from the taps: where a
  ``post`` tap (a layer's input) or a user's tap has the shape of the ``pre`` tap recorded
  just before it (the previous layer's output) and equals phi(that tap) for a
  registry activation phi on the first ``max_examples`` examples, that tap's
  activation is phi. Host code (runs the model once).

  Returns:
    {pre tap name: activation name}, only for the taps where one was found.
  """
  info, shapes = discover(model, x)
  pairs, last_pre = [], None
  for i in info:
    if i.role == "pre" and i.activation is None:
      last_pre = i.name
    elif i.role in ("post", "tap") and last_pre is not None:
      if shapes[last_pre].shape == shapes[i.name].shape:
        pairs.append((last_pre, i.name))
      last_pre = None
  if not pairs:
    return {}
  xs = jax.tree.map(lambda a: a[:max_examples], x)
  z, a = _pair_values(model.forward, model.params, tuple(pairs), xs)
  candidates = np.asarray(_candidate_values(z))  # one small program for every pair
  a = np.asarray(a)
  sizes = [int(np.prod(shapes[q].shape[1:])) * min(shapes[q].shape[0], max_examples)
           for _, q in pairs]
  found = {}
  for (pre, _), lo, hi in zip(pairs, np.cumsum([0] + sizes[:-1]), np.cumsum(sizes)):
    ref, cand = a[lo:hi], candidates[:, lo:hi]
    with np.errstate(invalid="ignore"):
      finite = np.isfinite(ref)[None] & np.isfinite(cand)
      scale = np.max(np.abs(np.where(np.isfinite(ref), ref, 0))) + 1e-30
      err = np.max(np.where(finite, np.abs(cand - ref[None]), 0), axis=1) / scale
    ok = np.nonzero(err <= INFER_TOLERANCE)[0]
    if ok.size:
      found[pre] = _CANDIDATES[int(ok[0])]
  return found
