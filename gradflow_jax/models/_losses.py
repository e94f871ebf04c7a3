"""Losses the gradient statistics are taken of."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

LOSSES = ("cross_entropy", "mse")


def check_loss_name(loss: str) -> str:
  if loss not in LOSSES:
    raise ValueError(f"unknown loss {loss!r}; expected one of: " + ", ".join(LOSSES))
  return loss


def check_targets(loss: str, y, batch: int, out_dim: int) -> None:
  """Shape and dtype of the targets; label range too when ``y`` is concrete."""
  check_loss_name(loss)
  shape = tuple(np.shape(y))
  if loss == "cross_entropy":
    if shape != (batch,) or not jnp.issubdtype(jnp.result_type(y), jnp.integer):
      raise ValueError(f"expected integer labels of shape ({batch},) for cross_entropy, "
                       f"got {jnp.result_type(y).name} {shape}")
    if not isinstance(y, jax.core.Tracer):
      yn = np.asarray(y)
      if yn.size and (yn.min() < 0 or yn.max() >= out_dim):
        raise ValueError(f"expected labels in [0, {out_dim}), got values in "
                         f"[{yn.min()}, {yn.max()}]")
  elif shape != (batch, out_dim):
    raise ValueError(f"expected targets of shape ({batch}, {out_dim}) for mse, got {shape}")


def loss_value(loss: str, out: jax.Array, y: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy over the batch, or mean squared error over all
  entries (PyTorch's ``CrossEntropyLoss`` and ``MSELoss`` defaults)."""
  out = out.astype(jnp.promote_types(out.dtype, jnp.float32))
  if loss == "cross_entropy":
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
  return jnp.mean((out - y) ** 2)
