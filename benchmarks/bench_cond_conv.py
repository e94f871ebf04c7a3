"""Why ``every=N`` keeps an unrolled model's pass out of its ``lax.cond``.

XLA:CPU runs a convolution's backward pass far slower under ``lax.cond``
than outside it. This prints, in one run, for a 3-layer linen CNN (32
channels, 16 x 16 x 3 inputs, batch 32):
1. ``jax.value_and_grad`` under ``lax.cond`` against the same call plain;
2. an off-step of ``gf.value_and_grad(every=10)`` (the instrumented pass
   outside the cond, only the statistics under it), and a measured step,
   against the bare training step (adam).

Run: python benchmarks/bench_cond_conv.py
"""

import os
import sys

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

sys.path.insert(0, os.path.dirname(__file__))
import gradflow_jax as gf  # noqa: E402
from _timing import paired_ratio  # noqa: E402


class CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    for features in (32, 32, 32):
      x = nn.relu(nn.Conv(features, (3, 3))(x))
    return nn.Dense(10)(x.mean((1, 2)))


def main():
  model = CNN()
  x = jax.random.normal(jax.random.key(0), (32, 16, 16, 3))
  y = jnp.arange(32) % 10
  params = model.init(jax.random.key(1), x)["params"]
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  def loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()
  vg = jax.value_and_grad(loss)
  plain = jax.jit(vg)
  under_cond = jax.jit(lambda p, x, y, i: jax.lax.cond(i > 0, vg, vg, p, x, y))
  r, t, tb = paired_ratio(lambda x, y: under_cond(params, x, y, 1), lambda x, y: plain(params, x, y),
                          x, y, number=2, repeat=5)
  print(f"backend: {jax.default_backend()}")
  print(f"value_and_grad of the CNN: plain {tb * 1e3:.1f} ms, under lax.cond {t * 1e3:.1f} ms "
        f"({r:.1f}x)")

  def make(value_and_grad, step_number):
    @jax.jit
    def step(p, o, x, y, i):
      out = value_and_grad(p, x, y, i)
      updates, o = tx.update(out[1], o, p)
      return optax.apply_updates(p, updates), o, out[0], out[2:]
    return lambda x, y: step(params, opt_state, x, y, jnp.int32(step_number))
  bare = make(lambda p, x, y, i: vg(p, x, y), 0)
  every10 = lambda p, x, y, i: gf.value_and_grad(loss, every=10)(p, x, y, step=i)
  for label, fn in (("every=10, an off-step", make(every10, 1)),
                    ("every=10, a measured step", make(every10, 0))):
    r, t, tb = paired_ratio(fn, bare, x, y, number=5, repeat=15)
    print(f"{label}: {t * 1e3:.1f} ms against the bare step's {tb * 1e3:.1f} ms ({r:.2f}x)")


if __name__ == "__main__":
  main()
