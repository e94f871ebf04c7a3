"""The one forward/backward pass every measurement of gradient flow uses.

``run(params, perturb, how) -> (output, taps)`` is a model whose taps take
perturbations (a :class:`~gradflow_jax.capture._probed.ProbedModel`'s forward with its
loss, or a user's loss function, see ``capture``). One ``jax.value_and_grad``
over (params, perturb) gives the loss, the parameter gradients, every tap's
value and, from the same backward pass, dL/d tap: whole (``norms=False``) or
as ||dL/d tap||^2 computed where the backward pass makes it (``norms=True``,
see ``_probe.norm_slots``: a scan then writes no stacked tap gradients).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gradflow_jax.measure import _backend
from gradflow_jax.measure._norms import grouped_norms
from gradflow_jax.capture import _probed as _probe


class FlowPass(NamedTuple):
  """What one forward/backward pass gives.

  Attributes:
    loss: the scalar loss.
    aux: the loss function's auxiliary output (``has_aux``), else None.
    grads: dL/dparams, a pytree like the parameters.
    taps: {tap name: value}.
    tap_grads: {tap name: dL/d tap} (``norms=False``), or the norm slots'
      gradients (``norms=True``): read ||dL/d tap|| with :meth:`tap_grad_norms`.
    norms: which of the two ``tap_grads`` holds.
  """
  loss: jax.Array
  aux: Any
  grads: Any
  taps: dict
  tap_grads: dict
  norms: bool

  def tap_grad_norms(self, names) -> jax.Array:
    """(len(names),) ||dL/d tap|| of each tap, in order."""
    if self.norms:
      return jnp.sqrt(_probe.slot_values(self.tap_grads, list(names)))
    return grouped_norms([self.tap_grads[n] for n in names], [_probe.family(n) for n in names])


def split_output(out, has_aux: bool):
  """(loss, aux) of a loss function's output (aux None without ``has_aux``)."""
  if not has_aux:
    return out, None
  if not isinstance(out, (tuple, list)) or len(out) != 2:
    raise ValueError(f"expected has_aux=True's loss to return (loss, aux), got "
                     f"{type(out).__name__}")
  return out[0], out[1]


def forward_backward(run: Callable, params, shapes: dict, *, norms: bool = True,
                     has_aux: bool = False) -> FlowPass:
  """One forward/backward pass of ``run`` (see the module docstring) at
  ``params``, with a perturbation slot for each tap in ``shapes`` (name ->
  shape and dtype). Perturbations are zero, so the pass's values are the
  model's own."""
  def objective(p, pt):
    out, taps = run(p, pt, "norms" if norms else "tangent")
    loss, aux = split_output(out, has_aux)
    return loss, (aux, taps)
  perturb = _probe.norm_slots(shapes) if norms else _probe.zero_perturbations(shapes)
  grad = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)
  if any(_probe.family(n) is not None for n in shapes):
    grad = _backend.share_scan_outputs(grad)  # taps that are residuals too: one output each
  (loss, (aux, taps)), (grads, tap_grads) = grad(params, perturb)
  return FlowPass(loss, aux, grads, taps, tap_grads, norms)
