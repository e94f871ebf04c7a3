"""The ``spectra`` tier: every weight matrix's largest singular value while
training, by power iteration whose vectors persist in the training state
(one matrix-vector pair per matrix and step: the estimate follows the weights
as they move), and the stable rank ||W||_F^2 / sigma_max^2.

  spectra = gf.watch.WeightSpectra()
  s = spectra.init(params, jax.random.key(0))
  ...inside the jitted step:
  s = spectra.update(s, params)      # s.sigma: per leaf, NaN for vectors
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradflow_jax.measure._norms import leaf_norm
from gradflow_jax.watch import _metrics


# Flax's names of parameters that are per-feature vectors, also when a scan
# over layers stacks them into (layers, features) arrays
VECTOR_NAMES = ("bias", "scale", "mean", "var")


def as_matrix(w: jax.Array, name: str = "") -> jax.Array | None:
  """A weight leaf as the (fan_in, fan_out) matrix its layer applies (a
  convolution kernel (..., in, out) flattened over its window and inputs);
  None for a vector or scalar, or a leaf whose last path key ``name`` is a
  bias or scale (stacked per layer by ``nn.scan`` it is 2-D, not a matrix)."""
  if (w.ndim < 2 or not jnp.issubdtype(w.dtype, jnp.inexact)
      or name.rsplit("/", 1)[-1] in VECTOR_NAMES):
    return None
  return w.reshape(-1, w.shape[-1])


def _named(params) -> list[tuple[str, jax.Array]]:
  return [(name, jnp.asarray(v)) for name, v in _metrics._named_values(params)]


class SpectraState(NamedTuple):
  """Attributes:
    vectors: per leaf the right singular vector estimate (fan_out,), or an
      empty array for leaves that are not matrices.
    sigma: per leaf the largest singular value estimate (NaN: not a matrix).
    change: per leaf |sigma - previous sigma| / sigma of the last update:
      small once the estimate has settled (see ``WeightSpectra.tol``).
  """
  vectors: tuple
  sigma: jax.Array
  change: jax.Array


@dataclasses.dataclass(frozen=True)
class WeightSpectra:
  """Power iteration on every weight matrix, ``iterations`` pairs per update.

  Attributes:
    iterations: matrix-vector pairs per update (1: the cost of a batch-1
      forward and backward pass through the weights).
    tol: ``converged`` is ``change <= tol``.
  """
  iterations: int = 1
  tol: float = 1e-3

  def init(self, params, key) -> SpectraState:
    leaves = _named(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    vectors = []
    for k, (name, w) in zip(keys, leaves):
      m = as_matrix(w, name)
      if m is None:
        vectors.append(jnp.zeros((0,), jnp.float32))
      else:
        v = jax.random.normal(k, (m.shape[1],), jnp.float32)
        vectors.append(v / jnp.linalg.norm(v))
    n = len(leaves)
    return SpectraState(tuple(vectors), jnp.full((n,), jnp.nan, jnp.float32),
                        jnp.full((n,), jnp.inf, jnp.float32))

  def update(self, state: SpectraState, params) -> SpectraState:
    """``iterations`` power steps from the kept vectors on the current weights."""
    leaves = _named(params)
    vectors, sigmas = [], []
    for v, (name, w) in zip(state.vectors, leaves):
      m = as_matrix(w, name)
      if m is None:
        vectors.append(v)
        sigmas.append(jnp.asarray(jnp.nan, jnp.float32))
        continue
      m = m.astype(jnp.float32)
      sigma = jnp.zeros((), jnp.float32)
      for _ in range(self.iterations):
        u = m @ v
        u = u / jnp.maximum(jnp.linalg.norm(u), 1e-30)
        t = m.T @ u
        sigma = jnp.linalg.norm(t)  # = u^T W v' -> sigma_max
        v = t / jnp.maximum(sigma, 1e-30)
      vectors.append(v)
      sigmas.append(sigma)
    sigma = jnp.stack(sigmas) if sigmas else jnp.zeros((0,), jnp.float32)
    change = jnp.abs(sigma - state.sigma) / sigma
    return SpectraState(tuple(vectors), sigma, jnp.where(jnp.isnan(state.sigma), jnp.inf, change))

  def converged(self, state: SpectraState) -> jax.Array:
    """Per leaf: the estimate moved by at most ``tol`` (relative) in the last update."""
    return state.change <= self.tol


def stable_ranks(params, sigma: jax.Array) -> jax.Array:
  """||W||_F^2 / sigma_max^2 per leaf (NaN for leaves that are not matrices):
  between 1 (one direction dominates) and min(fan_in, fan_out)."""
  fro = jnp.stack([leaf_norm(jnp.asarray(w)) for w in jax.tree.leaves(params)])
  return (fro / sigma) ** 2
