"""``tap``: an identity primitive that marks a tensor to watch.

A tap is an equation in the traced program, not a side effect: ``tap_p`` is
the identity with JVP, transpose, batching and lowering rules, so a model
that calls :func:`tap` runs, differentiates, vmaps and compiles exactly as
it would without it (XLA drops the identity). Only the capture
(``capture/_rewrite.py``) gives taps a meaning: it finds their equations in
the jaxpr and rewrites them to take a perturbation and hand out their value.
Values named with ``jax.ad_checkpoint.checkpoint_name`` are taps too (see
:func:`is_tap`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from jax.extend import core as jcore
from jax.interpreters import ad, batching, mlir

ROLES = ("pre", "post", "tap")


class TapInfo(NamedTuple):
  """What consumers know about one tap.

  Attributes:
    name: the tap's name.
    role: ``"pre"`` (a layer's output, the input of the activation that
      follows: saturation and dead units are tested here when the activation
      is known), ``"post"`` (a layer's input, usually the previous layer's
      activation) or ``"tap"`` (anything a user marked).
    activation: the activation applied to this tensor next (``"pre"``), or
      ``None`` when unknown.
  """
  name: str
  role: str = "tap"
  activation: str | None = None


tap_p = jcore.Primitive("gradflow_tap")
tap_p.def_impl(lambda x, **_: x)
tap_p.def_abstract_eval(lambda x, **_: x)
mlir.register_lowering(tap_p, lambda ctx, x, **_: [x])
ad.deflinear2(tap_p, lambda ct, x, **_: [ct])


def _tap_batch(args, dims, **params):
  return tap_p.bind(args[0], **params), dims[0]


batching.primitive_batchers[tap_p] = _tap_batch


def tap(name: str, x: jax.Array, role: str = "tap", activation: str | None = None, *,
        auto: bool = False) -> jax.Array:
  """Marks ``x`` as a point to watch: an analysis records its value and gives
  it a perturbation slot, so dL/dx comes out of the same backward pass.
  Anywhere else it is the identity (free under jit).

  Args:
    name: the tap's name (a second tap of the same name gets ``#2``).
    x: the tensor; its leading axis is the batch.
    role: ``"pre"`` when ``x`` is an activation's input, ``"post"`` when it is
      an activation's output, ``"tap"`` otherwise.
    activation: for ``"pre"``, the activation applied to ``x`` next (its
      saturation and dead-unit tests are then used).
    auto: a tap placed by a producer (a layer's input): skipped where ``x``
      is the model's data or already a tap, and shared by layers that read
      the same tensor (q, k, v).

  Example:
    >>> def mlp(params, x):
    ...   z = tap("z1", x @ params["w1"], role="pre", activation="tanh")
    ...   return jnp.tanh(z) @ params["w2"]
  """
  if role not in ROLES:
    raise ValueError(f"expected role in {ROLES}, got {role!r}")
  if not hasattr(x, "dtype") and isinstance(x, (int, float, complex)):
    x = jax.numpy.asarray(x)
  if not hasattr(x, "dtype") or not jax.numpy.issubdtype(x.dtype, jax.numpy.inexact):
    if auto:
      return x
    raise ValueError(f"expected a floating-point array to tap as {name!r}, got "
                     f"{getattr(x, 'dtype', type(x).__name__)}")
  return tap_p.bind(x, name=str(name), role=role, activation=activation, auto=bool(auto))


def is_tap(eqn) -> bool:
  """Whether ``eqn`` marks a tap: ``gf.tap`` or ``checkpoint_name``."""
  return eqn.primitive is tap_p or (eqn.primitive.name == "name" and "name" in eqn.params)


def tap_params(eqn) -> tuple[TapInfo, bool]:
  """(TapInfo, auto) of a tap equation."""
  p = eqn.params
  if eqn.primitive is tap_p:
    return TapInfo(p["name"], p["role"], p["activation"]), p["auto"]
  return TapInfo(str(p["name"])), False
