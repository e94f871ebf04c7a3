"""The monitored training step against the user's plain jitted step.

A Flax linen MLP (10 Dense layers of 256, tanh, batch 64) trained with adam:
one full step (forward, backward, optimizer update) written the plain way
with ``jax.value_and_grad``, against the same step with
``gf.value_and_grad`` (every statistic of every tap, per-leaf gradient
norms, update ratios) measuring on every step, and measuring on every 10th
step (``every=10``; timed over runs of 10 consecutive steps). Targets:
every step <= 1.3x, every=10 <= 1.05x, a skipped step alone <= 1.03x.

Run: python benchmarks/bench_watch.py
"""

import itertools
import os
import sys

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

sys.path.insert(0, os.path.dirname(__file__))
import gradflow_jax as gf  # noqa: E402
from _timing import paired_ratio  # noqa: E402


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for _ in range(10):
      x = jnp.tanh(nn.Dense(256)(x))
    return nn.Dense(10)(x)


def main():
  x = jax.random.normal(jax.random.key(1), (64, 128))
  y = jax.random.randint(jax.random.key(2), (64,), 0, 10)
  module = MLP()
  params = module.init(jax.random.key(0), x)["params"]
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(module.apply({"params": p}, x),
                                                           y).mean()

  @jax.jit
  def plain(params, opt_state, x, y, step):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def watched(every):
    vg = gf.value_and_grad(loss_fn, every=every,
                           activations={f"Dense_{i}": "tanh" for i in range(10)})

    @jax.jit
    def step_fn(params, opt_state, x, y, step):
      loss, grads, flow = vg(params, x, y, step=step)
      updates, opt_state = tx.update(grads, opt_state, params)
      new = optax.apply_updates(params, updates)
      return new, opt_state, loss, flow, gf.update_ratios(params, new, when=flow.measured)
    return step_fn

  steps = [jnp.int32(i) for i in range(10)]

  def run10(fn):
    def ten(params, opt_state, x, y):
      for s in steps:  # the same parameters each step: the cost, not training, is timed
        out = fn(params, opt_state, x, y, s)
      return out
    return ten

  base = run10(plain)
  every1 = run10(watched(1))
  every10 = run10(watched(10))
  r1, t1, tp = paired_ratio(every1, base, params, opt_state, x, y, number=3, repeat=31)
  r10, t10, tp10 = paired_ratio(every10, base, params, opt_state, x, y, number=3, repeat=31)
  off_step = watched(10)
  one = jnp.int32(1)
  r_off, t_off, _ = paired_ratio(lambda *a: off_step(*a, one), lambda *a: plain(*a, one), params,
                                 opt_state, x, y, number=20, repeat=31)
  print(f"linen MLP 10x256, batch 64, adam: plain step {tp / 10 * 1e3:.3f} ms")
  print(f"  measured every step : {t1 / 10 * 1e3:.3f} ms per step, ratio {r1:.3f} (target <= 1.3)")
  print(f"  measured every 10th : {t10 / 10 * 1e3:.3f} ms per step, ratio {r10:.3f} "
        "(target <= 1.05)")
  print(f"  a skipped step alone: {t_off * 1e3:.3f} ms, ratio {r_off:.3f} (target: a bare step, "
        "<= 1.03)")


if __name__ == "__main__":
  main()
