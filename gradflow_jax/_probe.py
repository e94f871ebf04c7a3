"""The one model interface: a probed model.

Every model, the built-in MLP or a user's, is reduced to

    forward(params, x, perturb) -> (output, taps)

``taps`` maps a tap name to the tensor recorded there; ``perturb`` maps the
same names to zeros added at those points, so ``jax.grad`` with respect to
``perturb`` gives dL/d(tap) in the backward pass that gives the parameter
gradients. :class:`ProbedModel` carries the function, its parameters and what
consumers need to know about each tap (:class:`TapInfo`).

Taps are recorded by :func:`tap` into a per-thread collector. Inside
``jax.lax.scan`` and ``jax.checkpoint`` (and so ``nn.scan``, ``nnx.scan``,
``nn.remat``, ``nnx.remat``) a recorded tensor would be a tracer of the inner
trace and could not leave it; while a collector is active those two functions
are routed through :func:`_scan` / :func:`_checkpoint`, which hand the taps out
as extra outputs (one tap per scanned layer, named ``name/layer_i``) and the
perturbations in as extra inputs. Other threads see the original functions.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ROLES = ("pre", "post", "tap")

_STATE = threading.local()
_PATCH_LOCK = threading.Lock()
_PATCH = {"depth": 0, "originals": None}


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

  def with_activations(self, mapping: dict[str, str]) -> "ProbedModel":
    """The same model with ``mapping`` (tap -> activation) added."""
    merged = {**dict(self.activations), **mapping}
    return self._replace(activations=tuple(sorted(merged.items())))


def _trace_state():
  import jax.extend.core
  return jax.extend.core.get_opaque_trace_state(convention="flax")


class _Collector:
  """Taps recorded in one trace. A root collector holds the caller's
  perturbations; a child collector (inside a routed scan or checkpoint body)
  asks its parent for them, under the names its taps get outside."""

  def __init__(self, perturb=None, parent=None, length=None, index=None):
    self.perturb = perturb or {}
    self.parent, self.length, self.index = parent, length, index
    self.taps: dict[str, jax.Array] = {}
    self.info: dict[str, TapInfo] = {}
    self.finals: dict[str, list[str]] = {}  # child: inner name -> names outside
    self.reserved: set[str] = set()
    self.trace = _trace_state()
    self._seen: dict[int, Any] = {}  # id -> object, kept alive so ids stay unique
    self._stacks: dict[str, Any] = {}
    self._replaced: dict[int, tuple] = {}
    self.sliced: dict[str, Any] = {}  # scan child: this layer's perturbations (the scan's xs)

  def final_name(self, name: str) -> str:
    """``name``, or ``name#2``, ``name#3``... for a name already taken (a
    layer called twice: weight sharing); reserves it."""
    final, i = name, 2
    while final in self.taps or final in self.reserved:
      final, i = f"{name}#{i}", i + 1
    self.reserved.add(final)
    return final

  def outside_names(self, name: str) -> list[str]:
    """A child's tap ``name`` as its parent will call it: one name per scanned
    layer (``name/layer_i``), or one for a checkpointed body."""
    if name not in self.finals:
      if self.length is None:
        self.finals[name] = [self.parent.final_name(name)]
      else:
        self.finals[name] = [self.parent.final_name(f"{name}/layer_{i}")
                             for i in range(self.length)]
    return self.finals[name]

  def lookup(self, name: str):
    """The perturbation for tap ``name`` of this collector, or None."""
    if self.parent is None:
      if name not in self.perturb and family(name) is not None:  # see norm_slots
        stack = self.perturb.get(family(name) + ALL_LAYERS)
        return None if stack is None else stack[_layer_index(name)]
      return self.perturb.get(name)
    if name in self.sliced and self.outside_names(name) == _layer_names(name, self.length):
      return self.sliced[name]
    # otherwise the stack is indexed by the loop counter; its transpose then
    # adds a whole stack into an accumulator on every step
    outside = [self.parent.lookup(n) for n in self.outside_names(name)]
    if any(p is None for p in outside):
      return None
    if self.length is None:
      return outside[0]
    if name not in self._stacks:
      self._stacks[name] = jnp.stack(outside)
    return self._stacks[name][self.index]

  def seen(self, x) -> bool:
    return id(x) in self._seen

  def replace(self, original, tapped):
    """Remembers that ``original`` was tapped as ``tapped`` (returned)."""
    self._replaced[id(original)] = (original, tapped)
    return tapped

  def tapped_as(self, x):
    hit = self._replaced.get(id(x))
    return hit[1] if hit is not None else None

  def mark(self, *xs):
    for x in xs:
      self._seen[id(x)] = x

  def record(self, name: str, x, role: str = "tap", activation: str | None = None):
    if _trace_state() != self.trace:
      # inside a transformation that is not routed (flax traces scan bodies once
      # on its own to find broadcasts; a user's inner jit/vmap): not recorded
      return x
    name = self.final_name(name) if self.parent is None else name
    if self.parent is not None and name in self.taps:
      name = f"{name}#{sum(n.split('#')[0] == name for n in self.taps) + 1}"
    if self.parent is not None:
      self.outside_names(name)
    info = TapInfo(name, role, activation)
    p = self.lookup(name)
    cut = getattr(_STATE, "cut", None)
    if cut is not None and (not cut or role in cut):  # see ``cutting``
      self.adopt(name, x, info)
      out = jax.lax.stop_gradient(x)
      out = out + p.astype(x.dtype) if p is not None else out
      self.mark(out)
      return out
    if p is not None:
      promise = getattr(_STATE, "zero_perturbations", None)
      if promise == "norms":
        x = _norm_slot(x, p)
      elif promise == "tangents":
        x = _plus_tangent(x, p.astype(x.dtype))
      else:
        x = x + p.astype(x.dtype)
    self.adopt(name, x, info)
    return x

  def adopt(self, name: str, x, info: TapInfo):
    self.taps[name] = x
    self.info[name] = info._replace(name=name)
    self.mark(x)

  def adopt_child(self, child: "_Collector", taps: dict):
    """Takes a child's taps (stacked over layers for a scan) as its own."""
    names = list(child.info)  # recording order (the dict came back sorted)
    for i in range(child.length or 1):
      for name in names:
        outside = child.outside_names(name)[i]
        self.adopt(outside, taps[name] if child.length is None else taps[name][i],
                   child.info[name])


def family(name: str) -> str | None:
  """The scanned tap a per-layer tap name belongs to (``name/layer_i`` ->
  ``name``), or None."""
  base, sep, layer = name.rpartition("/layer_")
  return base if sep and layer.isdigit() else None


def _layer_index(name: str) -> int:
  """i of a per-layer tap name ``name/layer_i``."""
  return int(name.rpartition("/layer_")[2])


def current():
  """The active collector of this thread, or None."""
  return getattr(_STATE, "collector", None)


def tap(name: str, x: jax.Array, role: str = "tap", activation: str | None = None) -> jax.Array:
  """Marks ``x`` as a point to watch: recorded, and given a perturbation slot
  so that dL/dx comes out of the same backward pass. Outside an analysis it
  returns ``x`` unchanged (free under jit).

  Args:
    name: the tap's name (a second call with the same name gets ``#2``).
    x: the tensor; its leading axis is the batch.
    role: ``"pre"`` when ``x`` is an activation's input, ``"post"`` when it is
      an activation's output, ``"tap"`` otherwise.
    activation: for ``"pre"``, the activation applied to ``x`` next (its
      saturation and dead-unit tests are then used).

  Example:
    >>> def mlp(params, x):
    ...   z = tap("z1", x @ params["w1"], role="pre", activation="tanh")
    ...   return jnp.tanh(z) @ params["w2"]
  """
  if role not in ROLES:
    raise ValueError(f"expected role in {ROLES}, got {role!r}")
  collector = current()
  if collector is None:
    return x
  return collector.record(str(name), x, role, activation)


@contextlib.contextmanager
def collecting(perturb=None):
  """Records taps made inside the block into a fresh collector (yielded)."""
  previous = current()
  _STATE.collector = _Collector(perturb)
  _install_routes()
  try:
    yield _STATE.collector
  finally:
    _STATE.collector = previous
    _remove_routes()


@jax.custom_jvp
def _plus_tangent(x, p):
  """``x`` with ``p``'s tangent added to its own: ``x + p`` where ``p`` is
  zero, without reading ``p`` in the forward pass."""
  del p
  return x


@_plus_tangent.defjvp
def _plus_tangent_jvp(primals, tangents):
  return primals[0], tangents[0] + tangents[1]


@jax.custom_vjp
def _norm_slot(x, slot):
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


_norm_slot.defvjp(_norm_slot_fwd, _norm_slot_bwd)


ALL_LAYERS = "/layer_*"  # the key suffix of a scanned tap's slots for all its layers


def norm_slots(shapes: dict) -> dict[str, jax.Array]:
  """Zero slots: perturbations whose gradients, under
  ``zero_perturbations_promised(norms=True)``, are each tap's ||dL/d tap||^2
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


@contextlib.contextmanager
def zero_perturbations_promised(norms: bool = False):
  """Within the block (while tracing) the caller promises every perturbation
  is zero, so a tap passes its value on unchanged and only differentiates
  through the perturbation. A scan then needs no perturbation input in its
  forward pass (each was a zero-filled stack copied into the loop and
  sliced every layer): the 4 x 64 scan transformer's monitored step
  1.64-1.67x -> 1.60-1.63x the bare one, with the same numbers bit for bit.
  Perturbations meant to move the forward pass must stay outside it. With
  ``norms`` the perturbations are ``norm_slots``."""
  previous = getattr(_STATE, "zero_perturbations", None)
  _STATE.zero_perturbations = "norms" if norms else "tangents"
  try:
    yield
  finally:
    _STATE.zero_perturbations = previous


@contextlib.contextmanager
def cutting(roles: tuple[str, ...] = ()):
  """Within the block every tap (of ``roles``; all when empty) records its
  value as it arrives and passes on ``stop_gradient(value) + perturbation``:
  derivatives with respect to the perturbations then see only the direct
  paths between neighbouring taps (the local Jacobians that
  ``tap_jacobian_norms`` measures)."""
  previous = getattr(_STATE, "cut", None)
  _STATE.cut = tuple(roles)
  try:
    yield
  finally:
    _STATE.cut = previous


def probed(apply_fn: Callable[[Any, jax.Array], Any], params=None, name: str = "function",
           activations: dict[str, str] | None = None) -> ProbedModel:
  """A probed model from ``apply_fn(params, x) -> output`` that calls :func:`tap`."""
  def forward(params, x, perturb=None):
    with collecting(perturb) as c:
      c.mark(*jax.tree.leaves(x))  # the model's input is never tapped as a layer input
      out = apply_fn(params, x)
    _STATE.last_info = c.info
    return out, dict(c.taps)
  return ProbedModel(forward, params, tuple(sorted((activations or {}).items())), name)


class TapShapes(NamedTuple):
  """Names (in recording order), shapes and infos of a model's taps."""
  shapes: dict
  info: dict


def discover_taps(model: ProbedModel, x) -> TapShapes:
  """Names, shapes and infos of the taps of ``model`` on ``x`` (traced, not
  run), in the order the model records them (pytrees would sort the names).
  Activations from ``model.activations`` are filled in."""
  order: list[str] = []
  infos: dict[str, TapInfo] = {}

  def run(p, x):
    _STATE.last_info = {}
    out, taps = model.forward(p, x, None)
    order.extend(taps)
    infos.update(getattr(_STATE, "last_info", {}))
    return out, taps

  _, taps = jax.eval_shape(run, model.params, x)
  known = dict(model.activations)
  info = {}
  for n in order:
    base = infos.get(n, TapInfo(n))
    act = known.get(n, base.activation)
    info[n] = base._replace(activation=act, role="pre" if act and base.role == "tap" else base.role)
  return TapShapes({n: taps[n] for n in order}, info)


def zero_perturbations(shapes: dict) -> dict[str, jax.Array]:
  return {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}


# --- taps through scan and checkpoint -------------------------------------------------


@contextlib.contextmanager
def _child(parent, length=None, index=None):
  _STATE.collector = _Collector(None, parent, length, index)
  try:
    yield _STATE.collector
  finally:
    _STATE.collector = parent


def _layer_names(name: str, length) -> list[str]:
  return [f"{name}/layer_{i}" for i in range(length)]


def _layer_stacks(parent: _Collector, length: int) -> dict:
  """The parent's perturbations of every complete ``name/layer_i`` family
  (i < ``length``), stacked in layer order: handed to a scan as extra xs,
  each layer gets its slice, whose transpose is a slice of the backward
  scan's output (no accumulation)."""
  available = parent.perturb if parent.parent is None else parent.sliced
  families: dict = {}
  stacks = {}
  for key, value in available.items():
    if key.endswith(ALL_LAYERS) and jnp.shape(value)[:1] == (length,):
      stacks[key[:-len(ALL_LAYERS)]] = value  # already stacked (norm_slots)
      continue
    base = family(key)
    if base is not None and value is not None:
      families.setdefault(base, {})[_layer_index(key)] = value
  for base, layers in families.items():
    if sorted(layers) == list(range(length)) and len(
        {(jnp.shape(v), jnp.result_type(v)) for v in layers.values()}) == 1:
      stacks[base] = jnp.stack([layers[i] for i in range(length)])
  return stacks


def _scan(original):
  def scan(f, init=None, xs=None, length=None, reverse=False, unroll=1, **kw):
    parent = current()
    if parent is None or _trace_state() != parent.trace:
      return original(f, init, xs, length=length, reverse=reverse, unroll=unroll, **kw)
    n = length if length is not None else jax.tree.leaves(xs)[0].shape[0]
    made = []

    def body(carry, x_and_perturb):
      (carry, i), (x, perturb) = carry, x_and_perturb
      with _child(parent, n, n - 1 - i if reverse else i) as c:
        c.sliced = perturb
        carry, y = f(carry, x)
      made.append(c)
      return (carry, i + 1), (y, dict(c.taps))

    (carry, _), (ys, taps) = original(body, (init, jnp.int32(0)), (xs, _layer_stacks(parent, n)),
                                      length=n, reverse=reverse, unroll=unroll, **kw)
    parent.adopt_child(made[-1], taps)
    return carry, ys
  return scan


def _checkpoint(original):
  def checkpoint(fun=None, **kw):
    if fun is None:
      return lambda f: checkpoint(f, **kw)

    def wrapped(*args, **kwargs):
      parent = current()
      if parent is None or _trace_state() != parent.trace:
        return original(fun, **kw)(*args, **kwargs)
      made = []

      def routed(*a, **k):
        with _child(parent) as c:
          out = fun(*a, **k)
        made.append(c)
        return out, dict(c.taps)
      out, taps = original(routed, **kw)(*args, **kwargs)
      parent.adopt_child(made[-1], taps)
      return out
    return wrapped
  return checkpoint


def _install_routes():
  with _PATCH_LOCK:
    if _PATCH["depth"] == 0:
      originals = (jax.lax.scan, jax.checkpoint, jax.remat)
      _PATCH["originals"] = originals
      jax.lax.scan = _scan(originals[0])
      jax.checkpoint = _checkpoint(originals[1])
      jax.remat = _checkpoint(originals[2])
    _PATCH["depth"] += 1


def _remove_routes():
  with _PATCH_LOCK:
    _PATCH["depth"] -= 1
    if _PATCH["depth"] == 0:
      jax.lax.scan, jax.checkpoint, jax.remat = _PATCH["originals"]
