"""Watch a linen model train with a flax TrainState (BatchNorm statistics and
a dropout key, as in the Flax examples).

``gf.value_and_grad`` replaces ``jax.value_and_grad``: same loss, aux and
gradients, plus the gradient flow of every Dense layer (tapped automatically)
from the same backward pass.

  python examples/watch_linen.py --steps 300 --out runs/linen
"""

import argparse
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training import train_state

import gradflow_jax as gf


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = True):
    for width in (128, 128):
      x = nn.Dense(width)(x)
      x = nn.BatchNorm(use_running_average=not train)(x)
      x = nn.Dropout(0.1, deterministic=not train)(nn.relu(x))
    return nn.Dense(10)(x)


class TrainState(train_state.TrainState):
  batch_stats: Any
  key: jax.Array


def main(steps: int = 300, out: str = "runs/linen", every: int = 10, batch: int = 64,
         tensorboard: str | None = None) -> str:
  """Trains on digits; returns the JSON Lines path."""
  data = gf.load_digits()
  model = MLP()
  x0 = jnp.asarray(data.x_train[:batch])
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x0)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                            batch_stats=variables["batch_stats"], key=jax.random.key(2),
                            tx=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)))

  @jax.jit
  def train_step(state, x, y, step):
    key = jax.random.fold_in(state.key, step)

    def loss_fn(params):
      logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                       mutable=["batch_stats"], rngs={"dropout": key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates
    (loss, updates), grads, flow = gf.value_and_grad(
        loss_fn, has_aux=True, every=every)(state.params, step=step)
    new = state.apply_gradients(grads=grads).replace(batch_stats=updates["batch_stats"])
    return new, loss, flow, gf.watch.update_ratios(state.params, new.params, when=flow.measured)

  path = os.path.join(out, "log.jsonl")
  n = len(data.x_train)
  writers = [gf.watch.JsonlWriter(path)] + ([gf.watch.TensorBoardWriter(tensorboard)] if tensorboard else [])
  try:
    for step in range(steps):
      at = (step * batch) % (n - batch)
      x, y = jnp.asarray(data.x_train[at:at + batch]), jnp.asarray(data.y_train[at:at + batch])
      state, loss, flow, ratios = train_step(state, x, y, jnp.int32(step))
      if step % every == 0:
        for writer in writers:
          gf.log_step(writer, step, flow, ratios)
  finally:
    for writer in writers:
      writer.close()
  print(f"final loss {float(loss):.4f}; log in {path}")
  return path


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--every", type=int, default=10)
  parser.add_argument("--out", default="runs/linen")
  parser.add_argument("--tensorboard", default=None, help="also write TensorBoard events here")
  a = parser.parse_args()
  main(a.steps, a.out, a.every, tensorboard=a.tensorboard)
