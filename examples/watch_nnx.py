"""Watch an NNX model train, in an ordinary nnx.Optimizer loop.

The only change to the loop is ``gf.nnx_value_and_grad`` in place of
``nnx.value_and_grad``: it returns the same loss and gradients, plus the
step's gradient flow from the same forward/backward pass (every 10th step
here, chosen on the host with a static ``measure``: the other steps are
exactly the plain step). ``gf.StepLogger`` writes it as JSON Lines
(and TensorBoard with ``--tensorboard DIR``, needs tensorboardX).

  python examples/watch_nnx.py --steps 300 --out runs/nnx
"""

import argparse
import functools
import os

import jax.numpy as jnp
import optax
from flax import nnx

import gradflow_jax as gf


class MLP(nnx.Module):
  """Dropout and BatchNorm in training mode, the model's own nnx.Rngs."""

  def __init__(self, sizes, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:-1])])
    self.norms = nnx.List([nnx.BatchNorm(b, rngs=rngs) for b in sizes[1:-1]])
    self.dropout = nnx.Dropout(0.1, rngs=rngs)
    self.head = nnx.Linear(sizes[-2], sizes[-1], rngs=rngs)

  def __call__(self, x):
    for layer, norm in zip(self.layers, self.norms):
      x = self.dropout(nnx.relu(norm(layer(x))))
    return self.head(x)


def loss_fn(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def main(steps: int = 300, out: str = "runs/nnx", every: int = 10, batch: int = 64,
         tensorboard: str | None = None) -> str:
  """Trains on digits; returns the JSON Lines path."""
  data = gf.load_digits()
  model = MLP([64, 128, 128, 10], nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  watched = gf.nnx_value_and_grad(loss_fn)

  # measure is static: two compiled steps, and the one that does not measure
  # is exactly the plain nnx.value_and_grad step
  @functools.partial(nnx.jit, static_argnames="measure")
  def train_step(model, optimizer, x, y, measure):
    old = gf.watch.snapshot(nnx.state(model, nnx.Param))  # values now, not live variables
    loss, grads, flow = watched(model, x, y, measure=measure)
    optimizer.update(model, grads)
    ratios = gf.watch.update_ratios(old, nnx.state(model, nnx.Param)) if measure else None
    return loss, flow, ratios

  writers = [gf.watch.JsonlWriter(os.path.join(out, "log.jsonl"))]
  if tensorboard:
    writers.append(gf.watch.TensorBoardWriter(tensorboard))
  n = len(data.x_train)
  # StepLogger writes each measured step when the next one is logged: the
  # host never waits for the step it has just dispatched
  with gf.StepLogger(*writers) as log:
    for step in range(steps):
      at = (step * batch) % (n - batch)
      x, y = jnp.asarray(data.x_train[at:at + batch]), jnp.asarray(data.y_train[at:at + batch])
      loss, flow, ratios = train_step(model, optimizer, x, y, measure=step % every == 0)
      if step % every == 0:  # the host reads only the measured steps
        log(step, flow, ratios)
  print(f"final loss {float(loss):.4f}; log in {writers[0].path}")
  return writers[0].path


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--every", type=int, default=10)
  parser.add_argument("--out", default="runs/nnx")
  parser.add_argument("--tensorboard", default=None)
  a = parser.parse_args()
  main(a.steps, a.out, a.every, tensorboard=a.tensorboard)
