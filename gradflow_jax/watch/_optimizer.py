"""The ``optimizer`` tier: the health of an Adam-family optax state, per
parameter leaf, inside jit (Composer's OptimizerMonitor logs the same moment
norms and cosine)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradflow_jax.measure._norms import leaf_norm


class AdamHealth(NamedTuple):
  """Per parameter leaf (the leaf order of ``jax.tree.leaves(params)``).

  Attributes:
    m_hat_norm: ||m-hat||, the bias-corrected first moment (the smoothed gradient).
    v_hat_norm: ||v-hat||, the bias-corrected second moment.
    cos_m_g: cos(m, g): near 1 the step follows this gradient; near 0 or
      negative the momentum fights it (noise, or a turn).
    eps_dominated: share of coordinates with epsilon >= sqrt(v-hat): there
      Adam's step is lr * m / eps (SGD-like, damped), not lr * sign-like.
  """
  m_hat_norm: jax.Array
  v_hat_norm: jax.Array
  cos_m_g: jax.Array
  eps_dominated: jax.Array


def find_adam_state(opt_state) -> optax.ScaleByAdamState:
  """The one ``ScaleByAdamState`` (mu, nu, count) in an optax state (a chain,
  ``inject_hyperparams``, an ``nnx.Optimizer``'s ``opt_state``).

  Raises:
    LookupError: none, or more than one.
  """
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(x)]
  if len(found) != 1:
    raise LookupError(f"expected one Adam state (optax.ScaleByAdamState) in the optimizer "
                      f"state, got {len(found)}")
  return found[0]


def _values(tree):
  from flax import nnx
  return [v[...] if isinstance(v, nnx.Variable) else jnp.asarray(v)
          for v in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))]


def _scaled_norm(x):
  """||x|| without underflow: v-hat of a tiny gradient (1e-24) squares to 0
  in float32, so the entries are scaled by their largest first."""
  x = x.astype(jnp.float32)
  top = jnp.max(jnp.abs(x))
  safe = jnp.where(top > 0, top, 1.0)
  return top * jnp.sqrt(jnp.sum((x / safe) ** 2))


# float32 squares are exact enough between these norms; outside (entries
# near 1e-19 underflow, near 1e19 overflow) the scaled second pass is taken
_SAFE = (1e-15, 1e15)


def _norm(x):
  """||x|| in one pass where that is safe, else :func:`_scaled_norm`."""
  x = x.astype(jnp.float32)
  fast = jnp.sqrt(jnp.sum(x * x))
  ok = (fast > _SAFE[0]) & (fast < _SAFE[1])
  return jax.lax.cond(ok, lambda x: fast, _scaled_norm, x)


def _cosine(m, g, m_norm, g_norm):
  """cos(m, g) in one pass where the norms are safe, else scaled."""
  m, g = m.astype(jnp.float32), g.astype(jnp.float32)
  fast = jnp.sum(m * g) / (m_norm * g_norm)
  ok = (jnp.minimum(m_norm, g_norm) > _SAFE[0]) & (jnp.maximum(m_norm, g_norm) < _SAFE[1])

  def scaled(mg):
    m, g = mg
    m = m / jnp.maximum(jnp.max(jnp.abs(m)), 1e-38)
    g = g / jnp.maximum(jnp.max(jnp.abs(g)), 1e-38)
    return jnp.sum(m * g) / (leaf_norm(m) * leaf_norm(g))
  return jax.lax.cond(ok, lambda mg: fast, scaled, (m, g))


def adam_health(opt_state, grads, *, b1: float = 0.9, b2: float = 0.999,
                eps: float = 1e-8) -> AdamHealth:
  """The ``optimizer`` tier of a step, from the state ``tx.update`` returned
  for ``grads`` (its moments already hold them). ``b1, b2, eps`` are the
  optimizer's own (optax's defaults here). About two passes over each of m,
  v and g (a second, scaled pass only for a leaf whose norms near float32's
  range ends)."""
  state = find_adam_state(opt_state)
  count = jnp.asarray(_values(state.count)[0], jnp.float32)
  mu, nu, g = _values(state.mu), _values(state.nu), _values(grads)
  if not (len(mu) == len(nu) == len(g)):
    raise ValueError(f"expected moments shaped like the gradients, got {len(mu)} and {len(g)} "
                     "leaves")
  m_scale, v_scale = 1 / (1 - b1**count), 1 / (1 - b2**count)
  vec = lambda values: jnp.stack(values).astype(jnp.float32) if values else jnp.zeros((0,))
  m_norms, g_norms = [_norm(m) for m in mu], [_norm(gi) for gi in g]
  return AdamHealth(
      vec([m_scale * n for n in m_norms]), vec([v_scale * _norm(v) for v in nu]),
      vec([_cosine(m, gi, mn, gn) for m, gi, mn, gn in zip(mu, g, m_norms, g_norms)]),
      # eps >= sqrt(v-hat), squared: no square root per coordinate
      vec([jnp.mean(v_scale * v.astype(jnp.float32) <= jnp.square(eps)) for v in nu]))
