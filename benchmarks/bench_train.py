"""A training step with all gradient-flow logging against the same jitted step
without it (10 hidden layers, width 256, batch 64): target <= 1.10. Also steps
per second of the whole loop (chunked scan + host transfers + evaluation)
against a bare loop of jitted steps.

Run: python benchmarks/bench_train.py
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(__file__))
import gradflow_jax as gf  # noqa: E402
from _timing import interleaved  # noqa: E402


def main():
  cfg = gf.MLPConfig(in_dim=128, width=256, depth=10, out_dim=10, activation="tanh")
  tc = gf.TrainConfig(optimizer="adam", lr=1e-3, clip=1.0, steps=500, eval_every=100)
  params = gf.init_mlp(jax.random.key(0), cfg)
  tx = gf.make_optimizer(tc)
  opt = tx.init(params)
  x = jax.random.normal(jax.random.key(1), (64, 128))
  y = jax.random.randint(jax.random.key(2), (64,), 0, 10)

  def bare(params, opt, x, y):
    loss, g = jax.value_and_grad(
        lambda p: gf.loss_value("cross_entropy", gf.mlp_apply(cfg, p, x)[0], y))(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt, loss

  logged = gf.make_step(cfg, tc, tx)
  t = interleaved({"bare": jax.jit(bare), "logged": jax.jit(logged)}, params, opt, x, y,
                  number=50, repeat=15)
  print(f"step: bare {t['bare'] * 1e3:.3f} ms, with all logging {t['logged'] * 1e3:.3f} ms, "
        f"ratio {t['logged'] / t['bare']:.3f} (target <= 1.10)")

  data = gf.teacher_task(in_dim=128, classes=10, n=4000)
  gf.train(cfg, gf.TrainConfig(**{**tc.__dict__, "steps": 100}), data)  # compile
  t0 = time.perf_counter()
  gf.train(cfg, tc, data)
  loop = tc.steps / (time.perf_counter() - t0)
  step = jax.jit(bare)
  xs, ys = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  p, o = params, opt
  key = jax.random.key(0)
  jax.block_until_ready(step(p, o, xs[:64], ys[:64]))
  t0 = time.perf_counter()
  for i in range(tc.steps):
    idx = jax.random.permutation(jax.random.fold_in(key, i), xs.shape[0])[:64]
    p, o, loss = step(p, o, xs[idx], ys[idx])
  jax.block_until_ready(loss)
  bare_loop = tc.steps / (time.perf_counter() - t0)
  print(f"whole loop: {loop:.0f} steps/s with logging, chunked transfers and evaluation; "
        f"bare Python loop of jitted steps {bare_loop:.0f} steps/s; ratio {bare_loop / loop:.2f}")


if __name__ == "__main__":
  main()
