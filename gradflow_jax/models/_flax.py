"""Flax producers of a :class:`~gradflow_jax.capture._probed.ProbedModel`.

Every layer with weights (linen ``Dense``, ``DenseGeneral``, ``Conv``,
``ConvTranspose``, ``Einsum``, ``Embed``; NNX ``Linear``, ``LinearGeneral``,
``Conv``, ``ConvTranspose``, ``Einsum``, ``Embed``) is tapped twice: its output
(role ``pre``: the input of the activation that follows) and its input (role
``post``: the previous layer's activation) unless that input is the model's
own input or already a tap. The input of every normalization layer
(``LayerNorm``, ``RMSNorm``, ``BatchNorm``, ``GroupNorm``) is tapped too
(role ``tap``): in a pre-LN network that is the residual stream. A user's
own ``self.perturb(name, x)`` points (Flax's intermediate-gradient mechanism)
are taps too, named by module path (role ``tap``). Only
trainable parameters are differentiated:
RNG state, batch statistics and other collections are held fixed, so Dropout
and BatchNorm in training mode run as the user wrote them (one fixed dropout
key per analysis; batch statistics of the training-mode forward, their
updates discarded).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from gradflow_jax.capture import _probed as _probe

_LINEN_LAYERS = ("Dense", "DenseGeneral", "Conv", "ConvTranspose", "ConvLocal", "Einsum", "Embed")
_NNX_LAYERS = ("Linear", "LinearGeneral", "Conv", "ConvTranspose", "Einsum", "Embed")
# normalization layers: their input is tapped (in a pre-LN network, the residual stream)
_NORMS = ("LayerNorm", "RMSNorm", "BatchNorm", "GroupNorm")


def select_output(out, output: Callable | str | int | None):
  """The array the loss uses: ``output(out)``, ``out[output]``, or by default
  the array itself, a tuple's first element, or a dict's ``"logits"``."""
  if callable(output):
    return output(out)
  if output is not None:
    if isinstance(out, dict):
      if output not in out:
        raise ValueError(f"expected output= to be a key of the model's output, one of "
                         f"{list(out)}, got {output!r}")
      return out[output]
    if isinstance(out, (tuple, list)):
      index = int(output) if isinstance(output, str) and output.lstrip("-").isdigit() else output
      if isinstance(index, bool) or not isinstance(index, int) or not -len(out) <= index < len(out):
        raise ValueError(f"expected output= to be an index of the model's {len(out)} outputs, "
                         f"got {output!r}")
      return out[index]
    raise ValueError(f"expected output= only for a model that returns a tuple or a dict, got "
                     f"{output!r} for a model that returns one "
                     f"{'array' if hasattr(out, 'shape') else type(out).__name__}")
  if isinstance(out, (tuple, list)) and out:
    return out[0]
  if isinstance(out, dict):
    if "logits" in out:
      return out["logits"]
    raise ValueError(f"expected the model to return an array, a tuple or a dict with 'logits', "
                     f"got a dict with keys {sorted(out)}; pass output=KEY or output=callable")
  return out


def _tap_input(name: str, x, role: str):
  """``x`` tapped as ``name/input`` unless it is the model's input, already a
  tap, or read by an earlier layer too (q, k, v: then that same tap)."""
  return _probe.tap(f"{name}/input", x, role=role, auto=True)


def _tap_perturb_point(path: str, name: str, value, perturb=lambda v: v):
  """``perturb(value)`` at a user's own ``self.perturb(name, value)`` (Flax's
  intermediate-gradient mechanism), tapped as ``path/name`` (role ``tap``):
  its statistics and dL/d value then come out of the analysis. A value that
  is already a tap (a layer's output), or the model's input, is not tapped
  again."""
  return _probe.tap(f"{path}/{name}" if path else name, perturb(value), role="tap", auto=True)


def _honour_linen_perturb(module) -> None:
  """Gives this bound module (a clone made for one apply, never the user's
  object) a ``perturb`` that does what Flax's does (adds the variable of a
  'perturbations' collection, when there is one) and taps the result."""
  if "perturb" in module.__dict__:
    return
  original = type(module).perturb
  path = "/".join(str(p) for p in module.path)

  def perturb(name, value, collection="perturbations"):
    return _tap_perturb_point(path, name, value,
                              lambda v: original(module, name, v, collection))
  object.__setattr__(module, "perturb", perturb)


def _tap_layer(name: str, call, x, *args, **kwargs):
  """Runs one weight layer with its input and output tapped."""
  out = call(_tap_input(name, x, "post"), *args, **kwargs)
  inexact = hasattr(out, "dtype") and jnp.issubdtype(out.dtype, jnp.inexact)
  return _probe.tap(name, out, role="pre") if inexact else out


def _linen_interceptor(next_fun, args, kwargs, context):
  kind = type(context.module).__name__
  _honour_linen_perturb(context.module)
  if context.method_name != "__call__" or kind not in _LINEN_LAYERS + _NORMS or not args:
    return next_fun(*args, **kwargs)
  path = "/".join(str(p) for p in context.module.path) or kind
  if kind in _NORMS:
    return next_fun(_tap_input(path, args[0], "tap"), *args[1:], **kwargs)
  return _tap_layer(path, next_fun, *args, **kwargs)


def from_linen(module, variables, *, rng: int | jax.Array = 0,
               rng_streams: tuple[str, ...] = ("dropout",), output=None, auto: bool = True,
               method=None, name: str | None = None, **apply_kwargs) -> _probe.ProbedModel:
  """A probed model for a Flax linen module.

  Args:
    module: the ``nn.Module`` (in the mode it should be analysed in: e.g.
      ``Dropout(deterministic=False)``, ``BatchNorm(use_running_average=False)``).
    variables: its variables; ``params`` are differentiated, every other
      collection (``batch_stats``...) is held fixed and passed as mutable, so
      training-mode BatchNorm runs (its updates are discarded).
    rng: seed or key of the RNG streams named in ``rng_streams`` (fixed: the
      analysis is deterministic).
    rng_streams: the RNG streams the module draws from when applied
      (default ``("dropout",)``).
    output: which part of a tuple/dict output the loss uses (see
      :func:`select_output`).
    auto: tap every weight layer's input and output (``gf.tap`` calls inside
      the module are recorded either way).
    method, apply_kwargs: passed to ``module.apply``.

  Returns:
    A :class:`ProbedModel` whose ``params`` are ``variables["params"]``.
  """
  from flax import linen as nn
  if not isinstance(variables, dict) or "params" not in variables:
    raise ValueError("expected linen variables with a 'params' collection (module.init(...)), "
                     f"got {type(variables).__name__}"
                     + (f" with keys {sorted(variables)}" if isinstance(variables, dict) else ""))
  rest = {k: v for k, v in variables.items() if k != "params"}
  mutable = sorted(rest) or False
  key = jax.random.key(rng) if isinstance(rng, int) else rng
  rngs = {s: jax.random.fold_in(key, i) for i, s in enumerate(rng_streams)}

  def apply_fn(params, x):
    def run():
      out = module.apply({"params": params, **rest}, x, method=method, mutable=mutable,
                         rngs=rngs, **apply_kwargs)
      return select_output(out[0] if mutable else out, output)
    if not auto:
      return run()
    with nn.intercept_methods(_linen_interceptor):
      return run()
  model = _probe.probed(apply_fn, variables["params"], name or type(module).__name__)
  return model


_NNX_TAPPED: dict[type, type] = {}


def _tapped_class(cls):
  """A subclass of an NNX layer class whose calls are tapped; set on the
  merged copy of the user's model only (never on the user's classes)."""
  if cls not in _NNX_TAPPED:
    def __call__(self, x, *args, **kwargs):
      if cls.__name__ in _NORMS:
        x = _tap_input(self._gradflow_name, x, "tap")
        return cls.__call__(self, x, *args, **kwargs)
      return _tap_layer(self._gradflow_name, lambda *a, **k: cls.__call__(self, *a, **k), x,
                        *args, **kwargs)
    _NNX_TAPPED[cls] = type(cls.__name__, (cls,), {"__call__": __call__})
  return _NNX_TAPPED[cls]


_NNX_PERTURBED: dict[type, type] = {}


def _perturb_class(cls):
  """A subclass of a user's NNX module class whose ``perturb(name, value)``
  taps the value (see ``_tap_perturb_point``) and returns it without
  creating a ``Perturbation`` variable (the tap is the perturbation)."""
  if cls not in _NNX_PERTURBED:
    def perturb(self, name, value, *args, **kwargs):
      del args, kwargs
      return _tap_perturb_point(self._gradflow_name, name, value)
    _NNX_PERTURBED[cls] = type(cls.__name__, (cls,), {"perturb": perturb})
  return _NNX_PERTURBED[cls]


def tap_nnx_layers(m) -> None:
  """Swaps the class of every Flax weight and normalization layer inside
  ``m`` (a merged copy, never the user's model) for its tapped subclass, and
  of every other module for one whose ``perturb`` calls are tapped."""
  from flax import nnx
  for path, mod in nnx.iter_graph(m):
    if not isinstance(mod, nnx.Module) or type(mod) in _NNX_TAPPED.values() or type(
        mod) in _NNX_PERTURBED.values():
      continue
    flax_layer = type(mod).__name__ in _NNX_LAYERS + _NORMS and type(
        mod).__module__.startswith("flax.")
    name = "/".join(str(p) for p in path)
    mod.__class__ = (_tapped_class if flax_layer else _perturb_class)(type(mod))
    object.__setattr__(mod, "_gradflow_name", name or (type(mod).__name__ if flax_layer else ""))


def from_nnx(model, *, output=None, auto: bool = True, name: str | None = None,
             call: Callable | None = None) -> _probe.ProbedModel:
  """A probed model for a Flax NNX module.

  Only ``nnx.Param`` variables are differentiated (``params`` is their
  ``nnx.State``); RNG streams, ``BatchStat`` and other state are held fixed,
  so Dropout and BatchNorm run in whatever mode the module is in
  (``model.train()`` / ``model.eval()``), with a fixed dropout key; their
  state updates are discarded. Weight layers are tapped on a merged copy of
  the model (its layers' classes swapped for tapped subclasses), never by
  patching the user's classes.

  Args:
    model: the ``nnx.Module``.
    output: which part of a tuple/dict output the loss uses.
    auto: tap every weight layer's input and output.
    call: ``call(module, x) -> output`` when the model is not called as
      ``module(x)``.
  """
  from flax import nnx
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def apply_fn(params, x):
    fresh = lambda state: jax.tree.map(lambda a: a, state)  # new Variables, of this trace
    m = nnx.merge(graphdef, fresh(params), fresh(rest))
    if auto:
      tap_nnx_layers(m)
    out = call(m, x) if call is not None else m(x)
    return select_output(out, output)
  return _probe.probed(apply_fn, params, name or type(model).__name__)


def as_probed(model, params=None, **kw) -> _probe.ProbedModel:
  """A :class:`ProbedModel` from a linen module (with its variables), an NNX
  module, a plain function ``f(params, x)`` (which may call ``gf.tap``), or a
  ProbedModel (returned as is)."""
  from flax import linen as nn
  from flax import nnx
  if isinstance(model, _probe.ProbedModel):
    return model
  if isinstance(model, nn.Module):
    return from_linen(model, params, **kw)
  if isinstance(model, nnx.Module):
    return from_nnx(model, **kw)
  if callable(model):
    output = kw.pop("output", None)
    fn = (lambda p, x: select_output(model(p, x), output))
    return _probe.probed(fn, params, getattr(model, "__name__", "function"))
  raise ValueError(f"expected a Flax linen/NNX module or a function f(params, x), got "
                   f"{type(model).__name__}")
