"""The full probe (statistics and gradients of every tapped layer) on a user's
Flax linen model against the same model's plain jitted value_and_grad
(10 Dense layers of 256 with tanh, batch 64): target <= 1.2.

Run: python benchmarks/bench_models.py
"""

import os
import sys

import jax
import jax.numpy as jnp
from flax import linen as nn

sys.path.insert(0, os.path.dirname(__file__))
import gradflow_jax as gf  # noqa: E402
from gradflow_jax import _model_stats  # noqa: E402
from _timing import interleaved  # noqa: E402


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for _ in range(10):
      x = jnp.tanh(nn.Dense(256)(x))
    return nn.Dense(10)(x)


def main():
  x = jax.random.normal(jax.random.key(1), (64, 128))
  y = jax.random.randint(jax.random.key(2), (64,), 0, 10)
  model = MLP()
  variables = model.init(jax.random.key(0), x)
  plain = jax.jit(jax.value_and_grad(
      lambda v, x, y: gf.loss_value("cross_entropy", model.apply(v, x), y)))
  forward = gf.from_linen(model)
  acts = tuple(sorted((f"Dense_{i}", gf.get_activation("tanh")) for i in range(10)))
  loss_fn = lambda out, y: gf.loss_value("cross_entropy", out, y)
  probe = lambda v, x, y: _model_stats._model_stats_jit(forward, v, x, y, loss_fn, acts)
  t = interleaved({"plain": plain, "probe": probe}, variables, x, y, number=50, repeat=15)
  print(f"linen MLP: plain value_and_grad {t['plain'] * 1e3:.3f} ms, full probe "
        f"{t['probe'] * 1e3:.3f} ms, ratio {t['probe'] / t['plain']:.3f} (target <= 1.2)")


if __name__ == "__main__":
  main()
