"""Naming the taps of a traced program: a static plan, nothing computed.

A :class:`Plan` walks one jaxpr and gives every tap a name unique in it (a
second ``h`` is ``h#2``), an info and an aval; a construct with taps inside
gets the plans of its bodies and the names their taps take outside (a
scanned tap ``t`` becomes ``t/layer_i``). ``_rewrite`` evaluates by it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from gradflow_jax.capture._primitive import is_tap, tap_params, TapInfo

ALL_LAYERS = "/layer_*"  # key suffix of one stacked perturbation for every layer of a scanned tap
CALLS = ("pjit", "jit", "closed_call", "core_call")
REMATS = ("checkpoint", "remat2", "remat")

class _Step(NamedTuple):
  kind: str          # "tap", "alias", "nested"
  name: str | None = None
  var: Any = None    # alias: the var whose value the tap's output takes
  plans: tuple = ()  # nested: the plans of the sub-jaxprs
  names: tuple = ()  # nested: per sub-plan {inner name: outer name}, or per layer for a scan


class Plan:
  """The taps of one jaxpr: their names (unique in it), infos and avals, and
  for every equation that holds a tap what the evaluation does there."""

  def __init__(self, jaxpr, data=frozenset(), memo: dict | None = None):
    self.memo = {} if memo is None else memo
    self.info: dict[str, TapInfo] = {}
    self.avals: dict[str, Any] = {}
    self.steps: dict[int, _Step] = {}
    tap_outputs, auto_inputs = set(), {}
    for eqn in jaxpr.eqns:
      if is_tap(eqn):
        self._tap(eqn, data, tap_outputs, auto_inputs)
      elif _holds_taps(eqn, self.memo):
        self._nested(eqn)

  def _add(self, name: str, info: TapInfo, aval) -> str:
    final, i = name, 2
    while final in self.info:
      final, i = f"{name}#{i}", i + 1
    self.info[final] = info._replace(name=final)
    self.avals[final] = aval
    return final

  def _tap(self, eqn, data, tap_outputs, auto_inputs):
    info, auto = tap_params(eqn)
    (x,), (out,) = eqn.invars, eqn.outvars
    if not jnp.issubdtype(x.aval.dtype, jnp.inexact):
      self.steps[id(eqn)] = _Step("alias", var=x)  # a checkpoint_name on integers
      return
    if auto and (isinstance(x, jcore.Literal) or x in data or x in tap_outputs):
      self.steps[id(eqn)] = _Step("alias", var=x)
      return
    if auto and x in auto_inputs:
      self.steps[id(eqn)] = _Step("alias", var=auto_inputs[x])
      return
    if auto:
      auto_inputs[x] = out
    tap_outputs.add(out)
    self.steps[id(eqn)] = _Step("tap", self._add(info.name, info, x.aval))

  def _nested(self, eqn):
    kind = eqn.primitive.name
    if kind == "scan":
      body = Plan(eqn.params["jaxpr"].jaxpr, memo=self.memo)
      layers = tuple({k: self._add(f"{k}/layer_{i}", body.info[k], body.avals[k])
                      for k in body.info} for i in range(eqn.params["length"]))
      self.steps[id(eqn)] = _Step("nested", plans=(body,), names=layers)
      return
    if kind == "cond":
      plans = tuple(Plan(b.jaxpr, memo=self.memo) for b in eqn.params["branches"])
      union: dict = {}
      for p in plans:
        for k, aval in p.avals.items():
          if k in union and union[k][1].strip_weak_type() != aval.strip_weak_type():
            raise ValueError(f"tap {k!r} is in several branches of a jax.lax.cond/switch with "
                             f"different shapes ({union[k][1].str_short()} and "
                             f"{aval.str_short()}); give the branches' taps different names")
          union.setdefault(k, (p.info[k], aval))
      names = {k: self._add(k, info, aval) for k, (info, aval) in union.items()}
      self.steps[id(eqn)] = _Step("nested", plans=plans, names=(names,))
      return
    inner = _inner_jaxpr(eqn)
    if inner is None:
      name = _first_tap(eqn)
      raise ValueError(f"tap {name!r} is inside a {_construct(kind)}, which gradflow_jax "
                       f"cannot carry a tap out of; move the tap outside it (a loop with a "
                       f"traced trip count can become jax.lax.scan or fori_loop with static "
                       f"bounds)")
    plan = Plan(inner, memo=self.memo)
    if kind == "shard_map":
      for k, aval in plan.avals.items():
        if _vma(aval) and aval.ndim == 0:
          raise ValueError(f"tap {k!r} inside jax.shard_map is a scalar that varies over mesh "
                           f"axes {sorted(_vma(aval))}: it has no axis to concatenate its "
                           f"blocks on; tap an array with a leading axis")
    names = {k: self._add(k, plan.info[k], _global_aval(eqn, plan.avals[k]))
             for k in plan.info}
    self.steps[id(eqn)] = _Step("nested", plans=(plan,), names=(names,))


_CONSTRUCTS = {"while": "jax.lax.while_loop (its trip count is traced)",
               "custom_linear_solve": "jax.lax.custom_linear_solve",
               "custom_transpose_call": "custom_transpose function",
               "pallas_call": "Pallas kernel"}


def _construct(kind: str) -> str:
  return _CONSTRUCTS.get(kind, f"{kind!r} primitive")


def _sub_jaxprs(eqn):
  return [j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j
          for j in jcore.jaxprs_in_params(eqn.params)]


def _holds_taps(eqn, memo: dict | None = None) -> bool:
  """Whether a sub-jaxpr of ``eqn`` holds a tap (``memo``: id -> (jaxpr, answer))."""
  memo = {} if memo is None else memo
  for j in _sub_jaxprs(eqn):
    hit = memo.get(id(j))
    if hit is None:
      hit = memo[id(j)] = (j, any(is_tap(e) or _holds_taps(e, memo) for e in j.eqns))
    if hit[1]:
      return True
  return False


def _first_tap(eqn) -> str:
  for j in _sub_jaxprs(eqn):
    for e in j.eqns:
      if is_tap(e):
        return tap_params(e)[0].name
      if _holds_taps(e):
        return _first_tap(e)
  return "?"


def _inner_jaxpr(eqn):
  """The one body of a construct the rewrite rebuilds (None for others)."""
  kind = eqn.primitive.name
  if kind in CALLS:
    j = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
  elif kind in REMATS or kind == "shard_map":
    j = eqn.params["jaxpr"]
  elif kind in ("custom_jvp_call", "custom_vjp_call"):
    j = eqn.params["call_jaxpr"]
  else:
    return None
  return j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j


def _global_aval(eqn, aval):
  """A tap's aval outside the equation (shard_map: blocks concatenated)."""
  if eqn.primitive.name != "shard_map":
    return aval
  axes = _varying_axes(eqn, aval)
  size = int(np.prod([eqn.params["mesh"].shape[a] for a in axes])) if axes else 1
  return aval.update(shape=(aval.shape[0] * size,) + aval.shape[1:])


def _vma(aval) -> frozenset:
  """The mesh axes a value inside shard_map varies over (jax >= 0.10 keeps
  them in ``manual_axis_type.varying``; earlier releases in ``vma``)."""
  mat = getattr(aval, "manual_axis_type", None)
  return frozenset(mat.varying if mat is not None else getattr(aval, "vma", None) or ())


def _varying_axes(eqn, aval) -> tuple:
  vma = _vma(aval)
  return tuple(a for a in eqn.params["mesh"].axis_names if a in vma)



def family(name: str) -> str | None:
  """The scanned tap a per-layer tap name belongs to (``name/layer_i`` ->
  ``name``), or None."""
  base, sep, layer = name.rpartition("/layer_")
  return base if sep and layer.isdigit() else None


def _layer_index(name: str) -> int:
  """i of a per-layer tap name ``name/layer_i``."""
  return int(name.rpartition("/layer_")[2])


