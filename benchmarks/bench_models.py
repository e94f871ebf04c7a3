"""Users' models through the probed-model interface.

1. The full statistics pass (every tap's statistics and gradient, the
   parameter gradient norms) on a Flax linen MLP (10 Dense layers of 256, tanh,
   batch 64) against the same model's plain jitted value_and_grad: target
   <= 1.10.
2. The local Jacobian norms of every tap (per example) on a 12-block linen
   pre-LN transformer (width 128, batch 16, sequence 8), end to end from a
   cold start (compilation included, as a user meets it), against the
   statistics pass likewise: target <= 3.

Run: python benchmarks/bench_models.py
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import linen as nn

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import gradflow_jax as gf  # noqa: E402
from gradflow_jax.measure import _model_stats  # noqa: E402
from _timing import paired_ratio  # noqa: E402


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for _ in range(10):
      x = jnp.tanh(nn.Dense(256)(x))
    return nn.Dense(10)(x)


def statistics_ratio():
  x = jax.random.normal(jax.random.key(1), (64, 128))
  y = jax.random.randint(jax.random.key(2), (64,), 0, 10)
  module = MLP()
  variables = module.init(jax.random.key(0), x)
  plain = jax.jit(jax.value_and_grad(
      lambda p, x, y: gf.loss_value("cross_entropy", module.apply({"params": p}, x), y)))
  model = gf.from_linen(module, variables)
  model = model.with_activations(gf.infer_activations(model, x))
  info, shapes = _model_stats.discover(model, x)
  loss = _model_stats.loss_fn("cross_entropy")
  stats = jax.jit(lambda p, x, y: _model_stats.flow_body(model.forward, p, x, y, loss, info,
                                                         shapes)[:5])
  ratio, t_stats, t_plain = paired_ratio(stats, plain, variables["params"], x, y)
  print(f"linen MLP 10x256 ({len(info)} taps): plain value_and_grad {t_plain * 1e3:.3f} ms, "
        f"all statistics {t_stats * 1e3:.3f} ms, ratio {ratio:.3f} (median of paired rounds; "
        "target <= 1.10)")


def jacobian_ratio():
  import linen_transformer
  module, variables, (x, y) = linen_transformer.make(depth=12, width=128)
  x = jax.random.normal(jax.random.key(1), (16, 8, 12))
  y = jnp.arange(16) % 4
  model = gf.from_linen(module, variables)
  t0 = time.perf_counter()
  jax.block_until_ready(gf.model_flow_stats(model, x, y))
  t_stats = time.perf_counter() - t0
  t0 = time.perf_counter()
  jac = jax.block_until_ready(gf.tap_jacobian_norms(model, x))
  t_jac = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(gf.tap_jacobian_norms(model, x))
  t_warm = time.perf_counter() - t0
  conv = float(jnp.mean(jac.converged))
  print(f"linen transformer 12 blocks, width 128 ({len(jac.names)} taps): statistics "
        f"{t_stats:.1f} s, tap Jacobians {t_jac:.1f} s cold ({t_warm:.2f} s warm), ratio "
        f"{t_jac / t_stats:.2f} (target <= 3); {conv:.0%} of norms converged")


if __name__ == "__main__":
  statistics_ratio()
  jacobian_ratio()
  print(f"backend: {jax.default_backend()}, devices: {jax.device_count()}")
