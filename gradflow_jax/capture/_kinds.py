"""What a tap does with its perturbation, and how perturbations reach the
taps of a body (a scan's stacked layers, a sub-jaxpr's inner names)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax.capture._plan import _layer_index, ALL_LAYERS, family

def _inner(perturb: dict, names: dict) -> dict:
  """The perturbations of a sub-jaxpr's taps, under their inner names (a
  scanned tap's stacked perturbation ``name/layer_*`` too)."""
  inner = {k: _lookup(perturb, o) for k, o in names.items()}
  inner = {k: v for k, v in inner.items() if v is not None}
  families: dict = {}
  for k, o in names.items():
    fk, fo = family(k), family(o)
    if fk is not None and fo is not None and _layer_index(k) == _layer_index(o):
      families.setdefault((fk, fo), 0)
  for fk, fo in families:
    if fo + ALL_LAYERS in perturb and fk + ALL_LAYERS not in inner:
      inner[fk + ALL_LAYERS] = perturb[fo + ALL_LAYERS]
  return inner


def _stack(perturb: dict, names: list[str], aval):
  """One (layers, ...) stack of the perturbations of ``names`` (the layers of
  one scanned tap), or None when none has one; missing layers are zeros."""
  base = family(names[0]) if names else None
  if base is not None and names == [f"{base}/layer_{i}" for i in range(len(names))]:
    whole = perturb.get(base + ALL_LAYERS)
    if whole is not None and jnp.shape(whole)[:1] == (len(names),):
      return whole
  values = [_lookup(perturb, n) for n in names]
  if all(v is None for v in values):
    return None
  like = next(v for v in values if v is not None)
  return jnp.stack([jnp.zeros(jnp.shape(like), jnp.result_type(like)) if v is None else v
                    for v in values])


def _lookup(perturb: dict, name: str):
  if name in perturb:
    return perturb[name]
  base = family(name)
  whole = None if base is None else perturb.get(base + ALL_LAYERS)
  return None if whole is None else whole[_layer_index(name)]


# --- custom_jvp / custom_vjp functions with taps inside ---------------------------------------


def _zero_tangent(x):
  dtype = jnp.result_type(x)
  if jnp.issubdtype(dtype, jnp.inexact):
    return jnp.zeros(jnp.shape(x), dtype)
  return np.zeros(jnp.shape(x), jax.dtypes.float0)


def custom_jvp(primal: Callable, rule: Callable) -> Callable:
  """``primal(args, perturb) -> (outs, taps)`` whose outputs' derivatives
  with respect to ``args`` are the user's rule (``rule(*args)`` binds the
  original function), and every other derivative ``primal``'s own."""
  @jax.custom_jvp
  def f(args, p):
    return primal(args, p)

  @f.defjvp
  def f_jvp(primals, tangents):
    args, p = primals
    ta, tp = tangents
    zeros_a = jax.tree.map(_zero_tangent, args)
    zeros_p = jax.tree.map(_zero_tangent, p)
    (outs, taps), (_, taps_from_args) = jax.jvp(primal, (args, p), (ta, zeros_p))
    _, (outs_from_p, taps_from_p) = jax.jvp(primal, (args, p), (zeros_a, tp))
    _, outs_rule = jax.jvp(rule, tuple(args), tuple(ta))
    out_t = [a + b for a, b in zip(outs_rule, outs_from_p)]
    tap_t = jax.tree.map(lambda a, b: a + b, taps_from_args, taps_from_p)
    return (outs, taps), (out_t, tap_t)
  return f


def custom_vjp(primal: Callable, rule: Callable) -> Callable:
  """:func:`custom_jvp` for a ``custom_vjp`` function (reverse mode only)."""
  @jax.custom_vjp
  def f(args, p):
    return primal(args, p)

  def fwd(args, p):
    _, pull_rule = jax.vjp(rule, *args)
    value, pull = jax.vjp(primal, args, p)
    return value, (pull_rule, pull, value)

  def bwd(res, ct):
    pull_rule, pull, (outs, _) = res
    ct_outs, ct_taps = ct
    from_rule = pull_rule(list(ct_outs))
    from_taps, _ = pull(([jnp.zeros_like(o) for o in outs], ct_taps))
    _, ct_p = pull(ct)
    ct_args = jax.tree.map(lambda a, b: a if b is None else a + b, list(from_rule),
                           list(from_taps))
    return ct_args, ct_p

  f.defvjp(fwd, bwd)
  return f


# --- perturbation kinds -------------------------------------------------------------------------


@jax.custom_jvp
def plus_tangent(x, p):
  """``x`` with ``p``'s tangent added to its own: ``x + p`` where ``p`` is
  zero, without reading ``p`` in the forward pass (a scan then takes no
  zero-filled perturbation stack in its forward loop)."""
  del p
  return x


@plus_tangent.defjvp
def _plus_tangent_jvp(primals, tangents):
  return primals[0], tangents[0] + tangents[1]


@jax.custom_vjp
def norm_slot(x, slot):
  """``x``; the gradient with respect to the scalar ``slot`` is
  ||dL/dx||^2 (accumulated in at least float32), computed where the backward
  pass makes dL/dx: inside a scan's backward loop, one layer at a time, rather
  than written out as a stacked gradient and reduced afterwards."""
  del slot
  return x


def _norm_slot_fwd(x, slot):
  return x, jnp.zeros((0,), slot.dtype)


def _norm_slot_bwd(like, ct):
  c = ct.astype(jnp.promote_types(ct.dtype, like.dtype))
  return ct, jnp.sum(c * c).astype(like.dtype)


norm_slot.defvjp(_norm_slot_fwd, _norm_slot_bwd)


