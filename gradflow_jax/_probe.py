"""Any model as a probed forward function ``forward(params, x, perturb) ->
(output, taps)``: plain JAX functions that call :func:`tap`, Flax linen modules
and Flax NNX modules (every Dense/Linear/Conv output tapped automatically, plus
whatever the user taps by hand)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp

_STATE = threading.local()


class _Collector:
  def __init__(self, perturb):
    self.perturb = perturb or {}
    self.taps: dict[str, jax.Array] = {}

  def record(self, name: str, x):
    if name in self.taps:
      base, i = name, 2
      while f"{base}#{i}" in self.taps:
        i += 1
      name = f"{base}#{i}"  # a layer called twice (weight sharing) gets a suffix
    if name in self.perturb:
      x = x + self.perturb[name]
    self.taps[name] = x
    return x


def tap(name: str, x: jax.Array) -> jax.Array:
  """Marks ``x`` as a layer to watch: recorded, and given a perturbation slot
  so that its gradient dL/dx comes out of the same backward pass. Outside an
  analysis it returns ``x`` unchanged (free under jit).

  Example:
    >>> def mlp(params, x):
    ...   h = tap("hidden", jnp.tanh(x @ params["w1"]))
    ...   return h @ params["w2"]
  """
  collector = getattr(_STATE, "collector", None)
  if collector is None:
    return x
  return collector.record(str(name), x)


@contextlib.contextmanager
def _collecting(perturb):
  previous = getattr(_STATE, "collector", None)
  _STATE.collector = _Collector(perturb)
  try:
    yield _STATE.collector
  finally:
    _STATE.collector = previous


def probed(apply_fn: Callable[[Any, jax.Array], jax.Array]):
  """Turns ``apply_fn(params, x) -> output`` (which calls :func:`tap`) into
  ``forward(params, x, perturb) -> (output, taps)``."""
  def forward(params, x, perturb=None):
    with _collecting(perturb) as c:
      out = apply_fn(params, x)
    return out, dict(c.taps)
  return forward


def _linen_interceptor(next_fun, args, kwargs, context):
  from flax import linen as nn
  out = next_fun(*args, **kwargs)
  if context.method_name == "__call__" and isinstance(
      context.module, (nn.Dense, nn.Conv, nn.DenseGeneral)):
    name = "/".join(str(p) for p in context.module.path) or type(context.module).__name__
    out = tap(name, out)
  return out


def from_linen(module, auto: bool = True, method=None, **apply_kwargs):
  """A probed forward function for a Flax linen module.

  Args:
    module: the ``nn.Module``.
    auto: tap the output of every ``Dense``/``DenseGeneral``/``Conv`` (the
      pre-activations), named by module path; ``tap`` calls inside the module
      (activations, block outputs) are recorded either way.
    method, apply_kwargs: passed to ``module.apply``.

  Returns:
    ``forward(variables, x, perturb) -> (output, taps)``.
  """
  from flax import linen as nn

  def apply_fn(variables, x):
    if not auto:
      return module.apply(variables, x, method=method, **apply_kwargs)
    with nn.intercept_methods(_linen_interceptor):
      return module.apply(variables, x, method=method, **apply_kwargs)
  return probed(apply_fn)


@contextlib.contextmanager
def _patched_nnx_layers(names: dict[int, str]):
  """Within the block, NNX Linear/Conv outputs go through :func:`tap`."""
  from flax import nnx
  originals = {cls: cls.__call__ for cls in (nnx.Linear, nnx.Conv)}

  def wrap(cls):
    original = originals[cls]

    def call(self, *args, **kwargs):
      return tap(names.get(id(self), type(self).__name__), original(self, *args, **kwargs))
    return call
  try:
    for cls in originals:
      cls.__call__ = wrap(cls)
    yield
  finally:
    for cls, fn in originals.items():
      cls.__call__ = fn


def from_nnx(model, auto: bool = True):
  """A probed forward function for a Flax NNX module.

  Returns:
    ``(forward, state)`` where ``forward(state, x, perturb) -> (output, taps)``
    and ``state`` is the model's ``nnx.State`` (the parameters to
    differentiate). With ``auto``, every ``nnx.Linear``/``nnx.Conv`` output is
    tapped, named by its attribute path.
  """
  from flax import nnx
  graphdef, state = nnx.split(model)

  def apply_fn(state, x):
    m = nnx.merge(graphdef, state)
    names = {id(mod): "/".join(str(p) for p in path) for path, mod in nnx.iter_graph(m)
             if isinstance(mod, (nnx.Linear, nnx.Conv))}
    if not auto:
      return m(x)
    with _patched_nnx_layers(names):
      return m(x)
  return probed(apply_fn), state


def discover_taps(forward, params, x) -> dict[str, jax.ShapeDtypeStruct]:
  """Names and shapes of the taps of ``forward`` on ``x`` (traced, not run), in
  the order the model records them (pytrees would sort the names)."""
  order: list[str] = []

  def run(p, x):
    out, taps = forward(p, x, None)
    order.extend(taps)
    return out, taps

  _, taps = jax.eval_shape(run, params, x)
  return {name: taps[name] for name in order}


def zero_perturbations(shapes: dict) -> dict[str, jax.Array]:
  return {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}
