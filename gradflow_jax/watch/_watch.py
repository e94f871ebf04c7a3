"""Gradient-flow statistics from the training step a user already has.

:func:`value_and_grad` is ``jax.value_and_grad`` for a loss function of the
parameters that also returns, from the *same* forward/backward pass, what
every tap saw: activation statistics, ||dL/d tap||, per-leaf ||dL/dp|| and
the global norm. Taps are the ``gf.tap`` calls inside the loss and, with
``auto=True``, every Flax linen weight layer the loss applies (see
``_flax``). :func:`nnx_value_and_grad` is the same for a loss of an NNX
module (as ``nnx.value_and_grad``). Everything is traced: call them inside
``jax.jit`` / ``nnx.jit``; nothing leaves the device.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from gradflow_jax import capture
from gradflow_jax.capture import _probed as _probe
from gradflow_jax.measure import _flow_pass, _model_stats
from gradflow_jax.models import _activations
from gradflow_jax.measure._norms import leaf_norm, norm_of_norms
from gradflow_jax.watch._flow_step import FlowStep, histogram



def _check_every(every):
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    raise ValueError(f"expected every to be an integer >= 1, got {every!r}")


def _check_activations(activations):
  for name in (activations or {}).values():
    _activations.get_activation(name)  # a clear error for an unknown name
  return dict(activations or {})


def _with_linen_taps(fun: Callable, auto: bool) -> Callable:
  """``fun`` with every linen weight layer it applies tapped (when ``auto``)."""
  if not auto:
    return fun

  def tapped(*args):
    from flax import linen as nn
    from gradflow_jax.models import _flax
    with nn.intercept_methods(_flax._linen_interceptor):
      return fun(*args)
  return tapped


_split_output = _flow_pass.split_output


def _check_scalar(loss):
  shape = getattr(loss, "shape", None)
  if shape != ():
    raise ValueError(f"expected the loss function to return a scalar, got shape {shape}")


def _discover(fun, args, activations):
  """(output shape, TapInfo per tap in order, tap shapes, the traced program)
  of ``fun`` on ``args`` (the data: ``args[1:]``)."""
  tapped = capture.trace(fun, args, data_argnums=tuple(range(1, len(args))))
  _probe.check_tap_names(activations, tapped.info)
  info = tuple(_with_activation(i, activations) for i in tapped.info.values())
  return tapped.out_shape, info, tapped.avals, tapped


def _with_activation(info: _probe.TapInfo, activations):
  act = activations.get(info.name, info.activation)
  role = "pre" if act and info.role == "tap" else info.role
  return info._replace(activation=act, role=role)


def _nan_like(tree):
  return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype)
                      if jnp.issubdtype(s.dtype, jnp.inexact) else jnp.zeros(s.shape, s.dtype),
                      tree)


def value_and_grad(fun: Callable, *, has_aux: bool = False, every: int = 1,
                   activations: dict[str, str] | None = None, auto: bool = True,
                   histograms: bool = False) -> Callable:
  """``jax.value_and_grad(fun)`` that also returns the step's gradient flow.

  Args:
    fun: ``fun(params, *args) -> loss`` (or ``(loss, aux)`` with
      ``has_aux``); differentiated with respect to ``params``. Taps are its
      ``gf.tap`` calls and, with ``auto``, the input and output of every linen
      weight layer it applies and the input of every linen normalization layer.
    has_aux: as in ``jax.value_and_grad``.
    every: measure on steps where ``step % every == 0`` (a ``lax.cond``
      between the measured step and the plain ``value_and_grad``; works with
      a traced ``step``, e.g. inside ``lax.scan``): other steps' statistics
      are NaN with ``measured=False``. With ``every > 1`` pass ``step=``.
      The cheapest skipped step is ``measure=False`` (below).
    activations: ``{tap name: activation name}`` for taps that are an
      activation's input (their saturation and dead-unit tests are used).
    auto: tap linen weight layers automatically.
    histograms: also return in-jit histograms of every tap's values and of
      dL/d tap (fixed bins, ``HISTOGRAM_EDGES``).

  Returns:
    ``f(params, *args, step=None, measure=None) -> (value, grads, FlowStep)``
    where ``value`` is ``loss`` or ``(loss, aux)`` and ``grads`` are
    dL/dparams, as ``jax.value_and_grad`` would return them. ``measure``, a
    Python bool, overrides ``every``: ``False`` is exactly the plain step (no
    taps, no cond), ``True`` measures. Make it a static argument of your jit
    (``static_argnames="measure"``, two compilations) and pass
    ``measure=step % 10 == 0`` from the host loop.

  Example:
    >>> def loss_fn(params, x, y):
    ...   return jnp.mean((model.apply(params, x) - y) ** 2)
    >>> @jax.jit
    ... def train_step(params, opt_state, x, y):
    ...   loss, grads, flow = gf.value_and_grad(loss_fn)(params, x, y)
    ...   updates, opt_state = tx.update(grads, opt_state, params)
    ...   return optax.apply_updates(params, updates), opt_state, flow
  """
  _check_every(every)
  activations = _check_activations(activations)

  tapped_fun = _with_linen_taps(fun, auto)
  def run(p, pt, *args, how, program):
    return capture.run(program, (p,) + args, pt, how)  # the program discover traced

  def discover(params, *args):
    out_shape, info, shapes, tapped = _discover(tapped_fun, (params,) + args, activations)
    _check_scalar(_split_output(out_shape, has_aux)[0])
    return info, shapes, tapped
  return _monitored(run, fun, discover, has_aux, every, histograms)


def model_value_and_grad(model: _probe.ProbedModel, loss: Callable, *, every: int = 1,
                         histograms: bool = False) -> Callable:
  """:func:`value_and_grad` for a :class:`ProbedModel` (``gf.from_linen``,
  ``gf.from_nnx``, ``gf.mlp_model``...) and ``loss(output, y)``: its taps
  and their known activations.

  Returns:
    ``f(params, x, y, step=None) -> (loss, grads, FlowStep)``.
  """
  _check_every(every)

  def run(p, pt, x, y, how, program=None):
    out, taps = model.forward(p, x, pt, how=how)
    return loss(out, y), taps

  def plain(p, x, y):
    return loss(model.forward(p, x, None)[0], y)

  def discover(params, x, y):
    return _model_stats.discover(model._replace(params=params), x) + (None,)
  return _monitored(run, plain, discover, False, every, histograms)


def _monitored(run, plain, discover, has_aux: bool, every: int, histograms: bool) -> Callable:
  """The monitored step of ``run(params, perturb, *args, how, program) ->
  (out, taps)``;
  ``plain(params, *args) -> out`` is the same without taps (the bare step);
  ``discover(params, *args) -> (TapInfo per tap, tap shapes, program)``
  (``program``: what ``run`` evaluates, traced once per call)."""

  def wrapped(params, *args, step=None, measure=None):
    if measure is not None and not isinstance(measure, bool):
      raise ValueError(f"expected measure=True/False (a Python bool, static under jit: use "
                       f"every= and step= for a traced choice), got {type(measure).__name__}")
    if measure is None and every > 1 and step is None:
      raise ValueError(f"expected step= (the step number) with every={every}")
    info, shapes, program = discover(params, *args)
    names = tuple(i.name for i in info)
    scanned = any(_probe.family(n) is not None for n in names)
    # ||dL/d tap|| from the backward pass itself (see _probe.norm_slots),
    # unless the tap gradients are needed whole (histograms) or an unrolled
    # model's statistics wait under a cond (the norms would run every step)
    slots = not histograms and (measure is not None or every == 1 or scanned)

    def tapped_pass(params, args):
      fp = _flow_pass.forward_backward(lambda p, pt, how: run(p, pt, *args, how=how,
                                                              program=program), params,
                                       shapes, norms=slots, has_aux=has_aux)
      return (fp.loss, (fp.aux, fp.taps)), (fp.grads, fp.tap_grads)

    def statistics(taps, gt, grads):
      stats, tap_norms, leaf_norms = _model_stats.tap_statistics(
          info, taps, grads, tap_grads=None if slots else gt,
          tap_grad_squares=gt if slots else None)
      hist = {}
      if histograms:
        for n in names:
          hist[f"act/{n}"] = histogram(taps[n])
          hist[f"grad/{n}"] = histogram(gt[n])
      return (stats, tap_norms, leaf_norms, norm_of_norms(leaf_norms), jnp.asarray(True), hist)

    def measured(params, args):
      (loss, (aux, taps)), (grads, gt) = tapped_pass(params, args)
      return (loss, aux), grads, statistics(taps, gt, grads)

    def skipped(shape):
      """The statistics of a step ``every`` skipped: NaN, measured=False."""
      return _nan_like(shape[:4]) + (jnp.asarray(False), _nan_like(shape[5]))

    def bare(params, args, like_measured=True):
      # the user's own forward/backward, no taps: what a skipped step costs.
      # Under a cond it must return the measured step's structure (NaN);
      # alone (measure=False) it returns no statistics at all, so the jitted
      # step has no extra outputs to hand back
      (loss, aux), grads = jax.value_and_grad(
          lambda p: _split_output(plain(p, *args), has_aux), has_aux=True)(params)
      if not like_measured:
        return (loss, aux), grads, (None, None, None, None, jnp.asarray(False), {})
      return (loss, aux), grads, skipped(jax.eval_shape(lambda p, a: measured(p, a)[2],
                                                        params, args))

    if measure is not None:
      (loss, aux), grads, flow = (measured(params, args) if measure else
                                  bare(params, args, like_measured=False))
    elif every == 1:
      (loss, aux), grads, flow = measured(params, args)
    elif scanned:
      # a scanned model's taps cost a stacked copy per layer: skip the whole
      # tapped pass on off-steps
      (loss, aux), grads, flow = jax.lax.cond(jnp.asarray(step) % every == 0, measured, bare,
                                              params, args)
    else:
      # taps of an unrolled model are the tensors the pass makes anyway: the
      # tapped pass costs what the bare one does, and only the statistics
      # wait for the step
      (loss, (aux, taps)), (grads, gt) = tapped_pass(params, args)
      shape = jax.eval_shape(statistics, taps, gt, grads)
      flow = jax.lax.cond(jnp.asarray(step) % every == 0, statistics,
                          lambda *_: skipped(shape), taps, gt, grads)
    stats, tap_norms, leaf_norms, gnorm, done, hist = flow
    step_stats = FlowStep.pack(_model_stats.ModelFlowStats(
        names, tuple(i.role for i in info), tuple(i.activation for i in info), stats,
        tap_norms, leaf_norms, gnorm, loss), done, hist)
    return ((loss, aux) if has_aux else loss), grads, step_stats

  return wrapped


def nnx_value_and_grad(fun: Callable, *, has_aux: bool = False, every: int = 1,
                       activations: dict[str, str] | None = None, auto: bool = True,
                       histograms: bool = False) -> Callable:
  """``nnx.value_and_grad(fun)`` (gradients of the ``nnx.Param`` state) that
  also returns the step's gradient flow (see :func:`value_and_grad`).

  Weight layers (``Linear``, ``LinearGeneral``, ``Conv``, ``Einsum``,
  ``Embed``) and normalization inputs are tapped on the copy of the model the
  loss runs on; the user's classes are never patched. The model's other state
  (RNG counts, BatchNorm statistics) is updated in place, as
  ``nnx.value_and_grad`` does.

  Args:
    fun: ``fun(model, *args)``, the loss (``(loss, aux)`` with ``has_aux``).
    has_aux, every, activations, histograms: as in :func:`value_and_grad`.
    auto: tap the weight layers and normalization inputs listed above.

  Returns:
    ``f(model, *args, step=None, measure=None) -> (value, grads, FlowStep)``;
    ``grads`` is an ``nnx.State`` of the parameters, for
    ``optimizer.update(model, grads)``. ``measure``, a Python bool, overrides
    ``every``: ``False`` is exactly ``nnx.value_and_grad`` (no taps, no
    cond), ``True`` measures; make it static in your ``nnx.jit``
    (``static_argnames="measure"``) and pass ``measure=step % 10 == 0``.
    ``step`` (an int array) is what ``every`` reads when ``measure`` is
    ``None``.
  """
  from flax import nnx
  from gradflow_jax.models import _flax
  _check_every(every)

  def wrapped(model, *args, step=None, measure=None):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def pure(p, rest, *a):
      fresh = lambda state: jax.tree.map(lambda v: v, state)  # Variables of this trace
      m = nnx.merge(graphdef, fresh(p), fresh(rest))
      if auto:
        _flax.tap_nnx_layers(m)
      out = fun(m, *a)
      loss, aux = _split_output(out, has_aux)
      return loss, (aux, nnx.state(m, nnx.Not(nnx.Param)))

    inner = value_and_grad(pure, has_aux=True, every=every, activations=activations, auto=False,
                           histograms=histograms)
    (loss, (aux, new_rest)), grads, flow = inner(params, rest, *args, step=step,
                                                 measure=measure)
    nnx.update(model, new_rest)
    return ((loss, aux) if has_aux else loss), grads, flow

  return wrapped


def update_ratios(old_params, new_params, when=None):
  """Per leaf ||new - old|| / ||old||, the update-to-weight ratio (a pytree
  like the parameters; ~1e-3 per step is the usual rule of thumb, far below:
  the layer barely learns, far above: it is unstable). A leaf with
  ||old|| = 0 (a zero-initialised bias on the first step) gives inf.

  Args:
    when: optional traced bool (e.g. a :class:`FlowStep`'s ``measured``):
      the ratios are computed only where it is True (``lax.cond``), NaN
      otherwise, so steps that ``every`` skips pay nothing for them.
  """
  _check_not_live(old_params, new_params)

  def ratios(old, new):
    def ratio(o, n):
      if not jnp.issubdtype(jnp.result_type(o), jnp.inexact):
        return jnp.asarray(jnp.nan, jnp.float32)
      return leaf_norm(n - o) / leaf_norm(o)
    return jax.tree.map(ratio, old, new)
  if when is None:
    return ratios(old_params, new_params)
  shape = jax.eval_shape(ratios, old_params, new_params)
  return jax.lax.cond(when, ratios, lambda o, n: _nan_like(shape), old_params, new_params)


def snapshot(tree):
  """The values of ``tree`` now, held apart from the live NNX variables it may
  hold (``nnx.state(model, nnx.Param)``), which an ``optimizer.update``
  changes in place. Take the old parameters of :func:`update_ratios` this
  way in an NNX loop."""
  return jax.tree.map(lambda a: a, tree)


def _check_not_live(old, new):
  """Refuses old and new parameters that share NNX variables: the update has
  changed the old ones in place, and every ratio would read 0."""
  from flax import nnx
  live = lambda t: {id(v) for v in jax.tree.leaves(t, is_leaf=lambda z: isinstance(
      z, nnx.Variable)) if isinstance(v, nnx.Variable)}
  if live(old) & live(new):
    raise ValueError("expected old parameters taken before the update, got the model's live "
                     "NNX variables (the update changed them in place: every ratio would be "
                     "0); take them as gf.watch.snapshot(nnx.state(model, nnx.Param))")


UPDATE_RATIO_RULE = 1e-3  # the rule-of-thumb update-to-weight ratio per step
