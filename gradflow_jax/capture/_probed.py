"""The one model interface: a probed model.

Every model, the built-in MLP or a user's, is reduced to

    forward(params, x, perturb) -> (output, taps)

``taps`` maps a tap name to the tensor recorded there; ``perturb`` maps the
same names to zeros added at those points, so ``jax.grad`` with respect to
``perturb`` gives dL/d(tap) in the backward pass that gives the parameter
gradients. :class:`ProbedModel` carries the function, its parameters and what
consumers need to know about each tap (:class:`TapInfo`). Taps are found and
carried out of the model's traced program by :mod:`gradflow_jax.capture`,
through scans, conds, remat and every other construct it names.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax import capture
from gradflow_jax.capture import ALL_LAYERS, family, ROLES, tap, TapInfo  # noqa: F401
from gradflow_jax.capture._plan import _layer_index  # noqa: F401


class ProbedModel(NamedTuple):
  """A model in the form every consumer takes.

  Attributes:
    forward: ``forward(params, x, perturb) -> (output, taps)``; ``perturb`` may
      be ``None``.
    params: what ``forward`` differentiates (only trainable parameters: RNG
      state, batch statistics and other collections are held inside).
    activations: ``((tap name, activation name), ...)`` known for taps (given
      by the producer, by :func:`tap`, by :func:`infer_activations` or by the
      user).
    name: a label for tables and reports.
  """
  forward: Callable
  params: Any
  activations: tuple = ()
  name: str = "model"

  def __repr__(self) -> str:
    leaves = jax.tree.leaves(self.params)
    size = sum(int(getattr(v, "size", 1)) for v in leaves)
    return (f"ProbedModel(name={self.name!r}, params=<{len(leaves)} arrays, {size:,} values>, "
            f"activations={dict(self.activations)!r})")

  def with_activations(self, mapping: dict[str, str]) -> "ProbedModel":
    """The same model with ``mapping`` (tap -> activation) added."""
    merged = {**dict(self.activations), **mapping}
    return self._replace(activations=tuple(sorted(merged.items())))


def norm_slots(shapes: dict) -> dict[str, jax.Array]:
  """Zero slots: perturbations whose gradients, with ``how="norms"``, are each tap's ||dL/d tap||^2
  (read them with :func:`slot_values`). A tap's slot is a scalar; the layers
  of a scanned tap (``name/layer_i`` for i < n) share one (n,) slot keyed
  ``name/layer_*``, which the scan takes as it is: its gradient is the
  backward loop's own stacked output (scalars per layer were a stack to build
  and, on the way back, a slice per layer to take apart)."""
  dtype = lambda v: jnp.promote_types(v.dtype, jnp.float32)
  layers: dict = {}
  for k, v in shapes.items():
    base = family(k)
    if base is not None:
      layers.setdefault(base, {})[_layer_index(k)] = dtype(v)
  stacked = {b: len(d) for b, d in layers.items()
             if sorted(d) == list(range(len(d))) and len(set(d.values())) == 1}
  slots = {}
  for k, v in shapes.items():
    base = family(k)
    if base in stacked:
      slots.setdefault(base + ALL_LAYERS, jnp.zeros((stacked[base],), dtype(v)))
    else:
      slots[k] = jnp.zeros((), dtype(v))
  return slots


def slot_values(slots: dict, names) -> jax.Array:
  """(len(names),) the entries of ``norm_slots``-shaped ``slots`` (their
  gradients) for each tap name, in order (one concatenation and one gather)."""
  offsets, pieces, at = {}, [], 0
  for k, v in slots.items():
    offsets[k] = at
    pieces.append(jnp.ravel(v))
    at += pieces[-1].size
  index = [offsets[n] if n in offsets else
           offsets[family(n) + ALL_LAYERS] + _layer_index(n) for n in names]
  flat = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)
  return flat[np.asarray(index, np.int32)]


class Forward:
  """``forward(params, x, perturb=None, *, how="add", cut=()) -> (output,
  taps)`` of ``apply_fn(params, x)``: its taps carried out of the traced
  program by :mod:`gradflow_jax.capture` (``how``: what each tap does with
  its perturbation, see ``capture.HOWS``; ``cut``: the roles cut when
  ``how="cut"``, all when empty)."""

  def __init__(self, apply_fn: Callable):
    self.apply_fn = apply_fn

  def trace(self, params, x) -> capture.Tapped:
    """The traced program and its taps (nothing computed)."""
    return capture.trace(self.apply_fn, (params, x), data_argnums=(1,))

  def __call__(self, params, x, perturb=None, *, how: str = "add", cut: tuple = ()):
    return capture.run(self.trace(params, x), (params, x), perturb, how, cut)


def probed(apply_fn: Callable[[Any, jax.Array], Any], params=None, name: str = "function",
           activations: dict[str, str] | None = None) -> ProbedModel:
  """A probed model from ``apply_fn(params, x) -> output`` that calls :func:`tap`
  (or ``checkpoint_name``)."""
  return ProbedModel(Forward(apply_fn), params, tuple(sorted((activations or {}).items())), name)


class TapShapes(NamedTuple):
  """Names (in recording order), shapes and infos of a model's taps."""
  shapes: dict
  info: dict


def discover_taps(model: ProbedModel, x) -> TapShapes:
  """Names, shapes and infos of the taps of ``model`` on ``x`` (traced, not
  run), in the order the model records them (pytrees would sort the names).
  Activations from ``model.activations`` are filled in."""
  if isinstance(model.forward, Forward):
    tapped = model.forward.trace(model.params, x)
    shapes, infos = tapped.avals, tapped.info
  else:  # a hand-made forward: its taps, in its own order
    shapes = jax.eval_shape(lambda p, x: model.forward(p, x, None)[1], model.params, x)
    infos = {}
  known = dict(model.activations)
  info = {}
  for n in shapes:
    base = infos.get(n, TapInfo(n))
    act = known.get(n, base.activation)
    info[n] = base._replace(activation=act, role="pre" if act and base.role == "tap" else base.role)
  return TapShapes(dict(shapes), info)


def check_tap_names(given, names, what: str = "activation names") -> None:
  """Raises a ValueError listing every name in ``given`` that is not a tap of
  ``names``, each with the nearest tap names (a misspelled name is never
  ignored)."""
  import difflib
  unknown = [g for g in given if g not in set(names)]
  if not unknown:
    return
  hints = []
  for g in unknown:
    near = difflib.get_close_matches(g, list(names), n=2, cutoff=0.5)
    hints.append(f"{g!r} (did you mean {' or '.join(map(repr, near))}?)" if near else repr(g))
  shown = sorted(names)
  listed = ", ".join(shown[:12]) + (f", ... ({len(shown)} taps)" if len(shown) > 12 else "")
  raise ValueError(f"expected {what} for taps among [{listed}], got {', '.join(hints)}")


def zero_perturbations(shapes: dict) -> dict[str, jax.Array]:
  return {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}
