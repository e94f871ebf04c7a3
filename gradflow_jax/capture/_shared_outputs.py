"""Scans that write each distinct per-layer value out once.

A scanned model's monitored pass saves, as outputs of its forward loop, both
the residuals the backward loop needs and the taps the statistics read; most
taps *are* residuals (a Dense layer's input, a LayerNorm's input), yet
``jax.lax.scan`` writes each as its own stacked output, and XLA keeps them
apart: each costs a zero-filled (layers, ...) buffer and a copy per layer.
The same happens among residuals (one value saved for two backward uses).
:func:`share_scan_outputs` traces a function to a jaxpr, merges equal
equations inside every scan body (common subexpressions), lets each scan
output every distinct value once, and evaluates the result in the caller's
trace: the same numbers, bit for bit, with fewer loop outputs.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.extend import core as jcore


def share_scan_outputs(fun: Callable) -> Callable:
  """``fun`` (pytrees in, pytrees out) evaluated from its jaxpr, with every
  scan's duplicate outputs merged (see the module docstring)."""
  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fun, return_shape=True)(*args)
    rewritten = closed.replace(jaxpr=_rewrite(closed.jaxpr))
    flat = jcore.jaxpr_as_fun(rewritten)(*jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), flat)
  return wrapped


_CALLS = ("jit", "pjit", "closed_call")  # call primitives whose body keeps its interface


def _key(x):
  """A hashable stand-in for an equation parameter (identity where the value
  is not hashable: two such parameters then never compare equal)."""
  try:
    hash(x)
    return ("v", type(x), x)
  except TypeError:
    return ("id", id(x))


def _atom(a, subst):
  if isinstance(a, jcore.Literal):
    if np.ndim(a.val) == 0:  # repr of a scalar is exact (-0.0, nan, 1e-45 stay apart)
      return ("lit", repr(np.asarray(a.val).item()), str(a.aval))
    return ("id", id(a))
  return subst.get(a, a)


def _rewrite(jaxpr: jcore.Jaxpr, cse: bool = False) -> jcore.Jaxpr:
  """``jaxpr`` with its scans' duplicate outputs merged (and, with ``cse``,
  equal effect-free equations merged: inside scan bodies)."""
  subst: dict = {}
  seen: dict = {}
  eqns = []
  for e in jaxpr.eqns:
    invars = [a if isinstance(a, jcore.Literal) else subst.get(a, a) for a in e.invars]
    e = e.replace(invars=invars)
    if e.primitive.name == "scan":
      e = _shared_scan(e, subst)
    elif e.primitive.name in _CALLS and isinstance(e.params.get("jaxpr"), jcore.ClosedJaxpr):
      inner = e.params["jaxpr"]  # a jitted function's body: its scans too
      e = e.replace(params=dict(e.params, jaxpr=inner.replace(jaxpr=_rewrite(inner.jaxpr))))
    if cse and not e.effects:
      key = (e.primitive, tuple(_atom(a, subst) for a in e.invars),
             tuple(sorted((k, _key(v)) for k, v in e.params.items())))
      hit = seen.get(key)
      if hit is None:
        seen[key] = e
      else:
        for new, old in zip(e.outvars, hit.outvars):
          if not isinstance(new, jcore.DropVar) and not isinstance(old, jcore.DropVar):
            subst[new] = old
        if all(isinstance(o, jcore.DropVar) or o in subst for o in e.outvars):
          continue
    eqns.append(e)
  outvars = [a if isinstance(a, jcore.Literal) else subst.get(a, a) for a in jaxpr.outvars]
  return jaxpr.replace(eqns=eqns, outvars=outvars)


def _shared_scan(e, subst: dict):
  """A scan equation whose body outputs each distinct stacked value once;
  ``subst`` learns which of the old outputs now stand for the dropped ones."""
  closed = e.params["jaxpr"]
  body = _rewrite(closed.jaxpr, cse=True)
  n_carry = e.params["num_carry"]
  keep, first = [], {}
  for k, (inner, outer) in enumerate(zip(body.outvars[n_carry:], e.outvars[n_carry:])):
    if isinstance(inner, jcore.Literal):
      keep.append(k)
      continue
    j = first.get(inner)
    if j is None:
      first[inner] = k
      keep.append(k)
    elif isinstance(e.outvars[n_carry + j], jcore.DropVar):
      # the output kept so far is unused outside: keep this one instead
      first[inner] = k
      keep[keep.index(j)] = k
    elif not isinstance(outer, jcore.DropVar):
      subst[outer] = e.outvars[n_carry + j]
  keep.sort()
  body = body.replace(outvars=body.outvars[:n_carry] + [body.outvars[n_carry + k] for k in keep])
  params = dict(e.params, jaxpr=closed.replace(jaxpr=body))
  outvars = e.outvars[:n_carry] + [e.outvars[n_carry + k] for k in keep]
  return e.replace(params=params, outvars=outvars)
