"""Watch a plain-JAX model (params a dict, ``gf.tap`` marking what to watch)
in a plain optax loop.

``gf.tap(name, x, role="pre", activation="tanh")`` says that ``x`` is tanh's
input, so its saturation is measured with tanh's test. The optimizer chain
records the raw gradient norm with optax's own ``optax.monitor`` and stops
cleanly (keeping the last finite parameters) if a gradient turns NaN/Inf.

  python examples/watch_optax.py --steps 300 --out runs/optax
"""

import argparse
import os

import jax
import jax.numpy as jnp
import optax

import gradflow_jax as gf


def init(key, sizes=(64, 128, 128, 10)):
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a), "b": jnp.zeros((1, b))}
          for k, a, b in zip(keys, sizes, sizes[1:])]


def apply(params, x):
  for i, layer in enumerate(params[:-1]):
    z = gf.tap(f"z{i}", x @ layer["w"] + layer["b"], role="pre", activation="tanh")
    x = jnp.tanh(z)
  return x @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()


def main(steps: int = 300, out: str = "runs/optax", every: int = 10, batch: int = 64,
         tensorboard: str | None = None) -> str:
  """Trains on digits; returns the JSON Lines path."""
  data = gf.load_digits()
  params = init(jax.random.key(0))
  tx = gf.watch.stop_if_nonfinite(optax.chain(gf.watch.gradient_flow_monitor(), optax.clip_by_global_norm(1.0),
                                        optax.sgd(0.1, momentum=0.9)))
  opt_state = tx.init(params)
  watched = gf.value_and_grad(loss_fn, every=every)

  @jax.jit
  def train_step(params, opt_state, x, y, step):
    loss, grads, flow = watched(params, x, y, step=step)
    updates, opt_state = tx.update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    return new, opt_state, loss, flow, gf.watch.update_ratios(params, new, when=flow.measured)

  path = os.path.join(out, "log.jsonl")
  n = len(data.x_train)
  writers = [gf.watch.JsonlWriter(path)] + ([gf.watch.TensorBoardWriter(tensorboard)] if tensorboard else [])
  try:
    for step in range(steps):
      at = (step * batch) % (n - batch)
      x, y = jnp.asarray(data.x_train[at:at + batch]), jnp.asarray(data.y_train[at:at + batch])
      params, opt_state, loss, flow, ratios = train_step(params, opt_state, x, y, jnp.int32(step))
      if step % every == 0:
        for writer in writers:
          scalars = gf.log_step(writer, step, flow, ratios)
        assert scalars["loss"] == float(loss)
      if bool(gf.watch.stopped(opt_state)):
        print(f"stopped at step {step}: non-finite gradient; parameters are the last finite ones")
        break
  finally:
    for writer in writers:
      writer.close()
  raw = float(optax.tree.get(opt_state, "gradflow/global_norm"))
  print(f"final loss {float(loss):.4f}; last raw gradient norm {raw:.3g}; log in {path}")
  return path


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--every", type=int, default=10)
  parser.add_argument("--out", default="runs/optax")
  parser.add_argument("--tensorboard", default=None, help="also write TensorBoard events here")
  a = parser.parse_args()
  main(a.steps, a.out, a.every, tensorboard=a.tensorboard)
