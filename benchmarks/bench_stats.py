"""Cost of all activation and gradient statistics in one jitted call, against a
plain jitted value_and_grad step on the same model (10 x 256, batch 64).

Target: ratio <= 1.10.  Run: python benchmarks/bench_stats.py
"""

import os
import sys

import jax

sys.path.insert(0, os.path.dirname(__file__))
import gradflow_jax as gf  # noqa: E402
from gradflow_jax.measure import _stats  # noqa: E402
from gradflow_jax.models import _mlp
from _timing import paired_ratio  # noqa: E402


def main():
  for act in ("tanh", "relu", "gelu"):
    cfg = gf.MLPConfig(in_dim=128, width=256, depth=10, out_dim=10, activation=act)
    params = gf.init_mlp(jax.random.key(0), cfg)
    x = jax.random.normal(jax.random.key(1), (64, 128))
    y = jax.random.randint(jax.random.key(2), (64,), 0, 10)

    plain = jax.jit(jax.value_and_grad(
        lambda p, x, y: gf.loss_value("cross_entropy", _mlp.mlp_apply(cfg, p, x)[0], y)))
    probed = jax.jit(lambda p, x, y: _stats.flow_stats_fn(cfg, p, x, y, "cross_entropy"))
    ratio, t_stats, t_plain = paired_ratio(probed, plain, params, x, y)
    print(f"{act:6s} plain value_and_grad {t_plain * 1e3:7.3f} ms   all statistics "
          f"{t_stats * 1e3:7.3f} ms   ratio {ratio:.3f}  (median of paired rounds; target <= 1.10)")
  print(f"backend: {jax.default_backend()}, devices: {jax.device_count()}")


if __name__ == "__main__":
  main()
