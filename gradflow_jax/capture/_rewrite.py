"""Taps carried out of a traced program: the one place that rewrites jaxprs.

:func:`capture` traces a function once to a jaxpr, names its taps
(:class:`Plan`, static: no value is computed) and evaluates the program in
the caller's trace with every tap rewritten to take a perturbation and hand
out its value. Equations without taps inside are bound as they are. Those
with taps inside are rebuilt with JAX's public constructors, each taking its
taps' perturbations as inputs and returning their values as outputs (the
design of Oryx's harvest and of ``jax.experimental.checkify``):

- ``scan`` (so ``lax.map``, ``fori_loop`` with static bounds, ``nn.scan``,
  ``nnx.scan``): a tap ``t`` of the body becomes ``t/layer_i`` for each
  iteration i; perturbations enter as stacked ``xs``, values leave as ``ys``;
- ``cond``/``switch``: the union of the branches' taps; a tap of a branch not
  taken reads zeros (and its dL/d tap is 0);
- inner ``jit`` and ``closed_call``: inlined;
- ``checkpoint``/``remat`` (any policy): rebuilt with the same policy;
- ``custom_jvp``/``custom_vjp`` functions: the user's rule still gives the
  derivatives with respect to the function's inputs; a perturbation's effect
  is differentiated through the function's primal (the rule cannot know it);
- ``shard_map``: a tap leaves as the concatenation, along its leading axis,
  of its blocks over the mesh axes it varies on;
- ``vmap``-ped code: ``tap_p``'s batching rule keeps the tap in the program.

Anything else with a tap inside (``while_loop``, whose trip count is traced,
``custom_linear_solve``, ``pallas_call``...) raises a ``ValueError`` naming
the tap and the construct: no tap is dropped silently.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from gradflow_jax.capture import _kinds
from gradflow_jax.capture._kinds import _inner, _lookup, _stack
from gradflow_jax.capture._plan import (_varying_axes, CALLS, Plan, REMATS)
from gradflow_jax.capture._primitive import TapInfo


# how a tap treats its perturbation p
HOWS = ("add",      # x + p: p moves the forward value and the derivatives
        "tangent",  # x, with p's tangent added: the caller promises p == 0
        "norms",    # x; p is a scalar slot whose gradient is ||dL/dx||^2 (see norm_slot)
        "cut")      # stop_gradient(x) + p for taps of ``cut`` roles: only direct paths remain



class Tapped(NamedTuple):
  """A traced program and its taps: ``info`` (name -> TapInfo) and
  ``avals`` (name -> ShapeDtypeStruct), in recording order."""
  closed: Any
  plan: "Plan"
  out_tree: Any
  dynamic: tuple
  static: tuple
  treedef: Any
  data: tuple
  out_shape: Any

  @property
  def info(self) -> dict[str, TapInfo]:
    return self.plan.info

  @property
  def avals(self) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct(a.shape, a.dtype) for k, a in self.plan.avals.items()}


# --- evaluation ------------------------------------------------------------------------------


class _Eval:
  """Evaluates planned jaxprs in the caller's trace; ``how`` and ``cut``
  say what a tap does with its perturbation (see ``HOWS``)."""

  def __init__(self, how: str = "add", cut: tuple = ()):
    if how not in HOWS:
      raise ValueError(f"expected how in {HOWS}, got {how!r}")
    self.how, self.cut = how, tuple(cut)

  def run(self, plan: Plan, jaxpr, consts, args, perturb: dict):
    """(outputs, {tap name: value}) of ``jaxpr`` on ``args``."""
    env: dict = {}
    read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
    for v, a in zip(jaxpr.constvars, consts):
      env[v] = a
    for v, a in zip(jaxpr.invars, args):
      env[v] = a
    taps: dict = {}
    for eqn in jaxpr.eqns:
      step = plan.steps.get(id(eqn))
      invals = [read(v) for v in eqn.invars]
      if step is None:
        outs = _bind(eqn, invals)
      elif step.kind == "alias":
        outs = [read(step.var)]
      elif step.kind == "tap":
        outs = [self._tap(eqn, plan.info[step.name], invals[0], _lookup(perturb, step.name),
                          taps)]
      else:
        outs = getattr(self, "_" + _rule(eqn))(eqn, step, invals, perturb, taps)
      for v, o in zip(eqn.outvars, outs):
        if not isinstance(v, jcore.DropVar):
          env[v] = o
    return [read(v) for v in jaxpr.outvars], taps

  def _tap(self, eqn, info, x, p, taps):
    cut = self.how == "cut" and (not self.cut or info.role in self.cut)
    if cut:
      taps[info.name] = x
      out = jax.lax.stop_gradient(x)
      out = out if p is None else out + p.astype(x.dtype)
    elif p is None:
      out = x
    elif self.how == "tangent":
      out = _kinds.plus_tangent(x, p.astype(x.dtype))
    elif self.how == "norms":
      out = _kinds.norm_slot(x, p)
    else:
      out = x + p.astype(x.dtype)
    if not cut:
      taps[info.name] = out
    if eqn.primitive.name == "name":  # keep checkpoint_name for remat policies
      out = _bind(eqn, [out])[0]
    return out

  def _scan(self, eqn, step, invals, perturb, taps):
    (body,), layers = step.plans, step.names
    prm = eqn.params
    nc, ncarry, length = prm["num_consts"], prm["num_carry"], prm["length"]
    consts, init, xs = invals[:nc], invals[nc:nc + ncarry], invals[nc + ncarry:]
    closed = prm["jaxpr"]
    stacks = {}
    for k in body.info:
      s = _stack(perturb, [layer[k] for layer in layers], body.avals[k])
      if s is not None:
        stacks[k] = s

    def f(carry, x):
      x, p = x
      outs, t = self.run(body, closed.jaxpr, closed.consts, consts + list(carry) + list(x), p)
      return outs[:ncarry], (outs[ncarry:], [t[k] for k in body.info])

    carry, (ys, stacked) = jax.lax.scan(
        f, init, (xs, stacks), length=length, reverse=prm["reverse"], unroll=prm["unroll"],
        _split_transpose=prm.get("_split_transpose", False))
    for i, layer in enumerate(layers):
      for k, value in zip(body.info, stacked):
        taps[layer[k]] = value[i]
    return list(carry) + list(ys)

  def _cond(self, eqn, step, invals, perturb, taps):
    (names,) = step.names
    index, ops = invals[0], invals[1:]
    p = _inner(perturb, names)

    def branch(plan, closed):
      def f(ops, p):
        outs, t = self.run(plan, closed.jaxpr, closed.consts, ops, p)
        return outs, [t[k] if k in t else jnp.zeros(a.shape, a.dtype)
                      for k, a in _union_avals(step).items()]
      return f
    outs, values = jax.lax.switch(index, [branch(pl, c) for pl, c in
                                          zip(step.plans, eqn.params["branches"])], ops, p)
    taps.update(zip(names.values(), values))
    return outs

  def _call(self, eqn, step, invals, perturb, taps):
    (plan,), (names,) = step.plans, step.names
    j = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    consts = j.consts if isinstance(j, jcore.ClosedJaxpr) else ()
    outs, t = self.run(plan, _open(j), consts, invals, _inner(perturb, names))
    taps.update({names[k]: v for k, v in t.items()})
    return outs

  def _remat(self, eqn, step, invals, perturb, taps):
    (plan,), (names,) = step.plans, step.names
    prm = eqn.params
    f = jax.checkpoint(lambda a, p: self.run(plan, prm["jaxpr"], (), a, p),
                       prevent_cse=prm["prevent_cse"], policy=prm["policy"])
    outs, t = f(invals, _inner(perturb, names))
    taps.update({names[k]: v for k, v in t.items()})
    return outs

  def _custom(self, eqn, step, invals, perturb, taps):
    (plan,), (names,) = step.plans, step.names
    closed = eqn.params["call_jaxpr"]
    primal = lambda a, p: self.run(plan, closed.jaxpr, closed.consts, a, p)
    rule = lambda *a: _bind(eqn, list(a))
    # norm slots are reverse-mode only: a custom_jvp function is then wrapped as a custom_vjp
    reverse = eqn.primitive.name == "custom_vjp_call" or self.how == "norms"
    wrap = _kinds.custom_vjp if reverse else _kinds.custom_jvp
    outs, t = wrap(primal, rule)(invals, _inner(perturb, names))
    taps.update({names[k]: v for k, v in t.items()})
    return outs

  def _shard_map(self, eqn, step, invals, perturb, taps):
    (plan,), (names,) = step.plans, step.names
    prm = eqn.params
    P = jax.sharding.PartitionSpec
    spec = lambda k: P(_varying_axes(eqn, plan.avals[k]) or None)
    p = {k: v for k, v in _inner(perturb, names).items() if k in plan.info}
    # a norm slot (a scalar) is replicated: its gradient sums every block's ||ct||^2
    pspec = lambda k: spec(k) if jnp.ndim(p[k]) == plan.avals[k].ndim else P()
    order = list(plan.info)
    def body(a, p):
      p = {k: v if pspec(k) == spec(k) else _varying(v, _varying_axes(eqn, plan.avals[k]))
           for k, v in p.items()}
      outs, t = self.run(plan, prm["jaxpr"], (), a, p)
      return outs, [t[k] for k in order]
    f = jax.shard_map(
        body,
        mesh=prm["mesh"], in_specs=(list(prm["in_specs"]), {k: pspec(k) for k in p}),
        out_specs=(list(prm["out_specs"]), [spec(k) for k in order]),
        check_vma=prm["check_vma"], axis_names=set(prm["newly_manual_axes"]))
    outs, values = f(list(invals), p)
    taps.update({names[k]: v for k, v in zip(order, values)})
    return outs


def _varying(x, axes: tuple):
  """``x`` (the same on every device) typed as varying over ``axes``: its
  cotangent is then summed over them."""
  if not axes:
    return x
  cast = getattr(jax.lax, "pcast", None)
  return cast(x, axes, to="varying") if cast is not None else jax.lax.pvary(x, axes)


def _rule(eqn) -> str:
  kind = eqn.primitive.name
  if kind in ("scan", "cond", "shard_map"):
    return kind
  if kind in CALLS:
    return "call"
  if kind in REMATS:
    return "remat"
  return "custom"


def _union_avals(step) -> dict:
  avals: dict = {}
  for p in step.plans:
    for k, a in p.avals.items():
      avals.setdefault(k, a)
  return avals


def _open(j):
  return j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j


def _bind(eqn, invals):
  params = eqn.primitive.get_bind_params(eqn.params)
  with eqn.ctx.manager:
    outs = eqn.primitive.bind(*invals, **params)
  return list(outs) if eqn.primitive.multiple_results else [outs]


# --- the entry points -------------------------------------------------------------------------


def _is_dynamic(leaf) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int, complex, bool)) or (
      hasattr(leaf, "shape") and hasattr(leaf, "dtype"))


def trace(fun: Callable, args: tuple, data_argnums: tuple[int, ...] = ()) -> Tapped:
  """``fun(*args)`` traced to a jaxpr, with its taps named (nothing is
  computed). Array leaves of ``args`` are the program's inputs; other
  leaves (functions, strings, ``None``...) are held fixed, as
  ``jax.value_and_grad`` holds them. A tap whose value is a leaf of the
  arguments in ``data_argnums`` (the data) is never a layer's input tap."""
  leaves, treedef = jax.tree.flatten(args)
  dynamic = tuple(i for i, leaf in enumerate(leaves) if _is_dynamic(leaf))
  static = tuple((i, leaves[i]) for i in range(len(leaves)) if i not in set(dynamic))

  def flat_fun(*dyn):
    full = list(leaves)
    for i, v in zip(dynamic, dyn):
      full[i] = v
    return fun(*jax.tree.unflatten(treedef, full))

  closed, out_shape = jax.make_jaxpr(flat_fun, return_shape=True)(
      *[leaves[i] for i in dynamic])
  owner = _arg_of_leaf(args)
  data = frozenset(v for v, i in zip(closed.jaxpr.invars, dynamic) if owner[i] in data_argnums)
  plan = Plan(closed.jaxpr, data)
  return Tapped(closed, plan, jax.tree.structure(out_shape), dynamic, static, treedef,
                tuple(sorted(data_argnums)), out_shape)


def _arg_of_leaf(args: tuple) -> list[int]:
  return [i for i, a in enumerate(args) for _ in jax.tree.leaves(a)]


def run(tapped: Tapped, args: tuple, perturb: dict | None = None, how: str = "add",
        cut: tuple = ()) -> tuple[Any, dict]:
  """(output, {tap name: value}) of the traced program on ``args`` (in the
  caller's trace: jit, grad, vmap see the rewritten program), each tap
  taking ``perturb[name]`` as ``how`` says."""
  leaves = jax.tree.leaves(args)
  dyn = [leaves[i] for i in tapped.dynamic]
  outs, taps = _Eval(how, cut).run(tapped.plan, tapped.closed.jaxpr, tapped.closed.consts, dyn,
                                   dict(perturb or {}))
  return jax.tree.unflatten(tapped.out_tree, outs), {k: taps[k] for k in tapped.plan.info}


def capture(fun: Callable, args: tuple, perturb: dict | None = None, *, how: str = "add",
            cut: tuple = (), data_argnums: tuple[int, ...] = ()):
  """(``fun(*args)``, {tap name: value}, {tap name: TapInfo}): every tap of
  ``fun`` carried out of the program (see the module docstring)."""
  tapped = trace(fun, args, data_argnums)
  out, taps = run(tapped, args, perturb, how, cut)
  return out, taps, tapped.info
