"""A training step with all gradient-flow logging and the NaN/Inf guard against
the same step without them (10 hidden layers, width 256, batch 64; target
<= 1.10), measured two ways in one run:

1. one jitted call per step (``gf.studies.make_step`` against a plain jitted
   ``value_and_grad`` + optax step);
2. per step inside a ``lax.scan`` chunk, the way ``gf.studies.train`` runs: our chunk
   against a chunk of bare steps with the same batch sampling.

Also steps per second of the whole ``gf.studies.train`` loop (chunks, one host
transfer per chunk, evaluation) against a Python loop of bare jitted steps.

Run: python benchmarks/bench_train.py
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))
import gradflow_jax as gf  # noqa: E402
from gradflow_jax import _data  # noqa: E402
from gradflow_jax.studies import _train  # noqa: E402
from gradflow_jax.models import _mlp
from _timing import interleaved  # noqa: E402

CHUNK = 50


def main():
  cfg = gf.MLPConfig(in_dim=128, width=256, depth=10, out_dim=10, activation="tanh")
  tc = gf.studies.TrainConfig(optimizer="adam", lr=1e-3, clip=1.0, steps=500, eval_every=100)
  params = gf.init_mlp(jax.random.key(0), cfg)
  tx = _train.make_optimizer(tc)
  opt = tx.init(params)
  x = jax.random.normal(jax.random.key(1), (64, 128))
  y = jax.random.randint(jax.random.key(2), (64,), 0, 10)

  def bare(params, opt, x, y):
    loss, g = jax.value_and_grad(
        lambda p: gf.loss_value("cross_entropy", _mlp.mlp_apply(cfg, p, x)[0], y))(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt, loss

  t = interleaved({"bare": jax.jit(bare), "logged": jax.jit(gf.studies.make_step(cfg, tc, tx))},
                  params, opt, x, y, number=50, repeat=15)
  print(f"1. one jitted call per step: bare {t['bare'] * 1e3:.3f} ms, with all logging and "
        f"the guard {t['logged'] * 1e3:.3f} ms, ratio {t['logged'] / t['bare']:.3f} "
        f"(target <= 1.10)")

  data = _data.teacher_task(in_dim=128, classes=10, n=4000)
  xs, ys = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

  n, size = xs.shape[0], tc.batch_size

  @jax.jit
  def bare_chunk(params, opt, stopped, key, start, xs, ys):
    def body(carry, step):
      p, o, perm = carry
      perm, idx = _train._next_batch(key, perm, step, n, size)  # the same batches as ours
      p, o, loss = bare(p, o, xs[idx], ys[idx])
      return (p, o, perm), loss
    carry = (params, opt, _train._epoch_perm(key, start, n, size))
    (p, o, _), losses = jax.lax.scan(body, carry, start + jnp.arange(CHUNK, dtype=jnp.int32))
    return p, o, stopped, losses

  ours = _train._chunk_fn(cfg, tc, CHUNK)
  t = interleaved({"bare": bare_chunk, "logged": ours}, params, opt, jnp.zeros((), bool),
                  jax.random.key(3), jnp.int32(0), xs, ys, number=2, repeat=15)
  print(f"2. per step in a lax.scan chunk of {CHUNK}: bare {t['bare'] / CHUNK * 1e3:.3f} ms, "
        f"with all logging and the guard {t['logged'] / CHUNK * 1e3:.3f} ms, "
        f"ratio {t['logged'] / t['bare']:.3f} (target <= 1.10)")

  gf.studies.train(cfg, tc, data)  # compiles the chunk and evaluation
  t0 = time.perf_counter()
  gf.studies.train(cfg, tc, data)
  loop = tc.steps / (time.perf_counter() - t0)
  step = jax.jit(bare)
  p, o = params, opt
  rng = np.random.default_rng(0)
  x_host, y_host = data.x_train, data.y_train
  jax.block_until_ready(step(p, o, x_host[:size], y_host[:size]))
  order = rng.permutation(n)
  t0 = time.perf_counter()
  for i in range(tc.steps):  # what a user writes: shuffle per epoch on the host
    pos = i % (n // size)
    if pos == 0:
      order = rng.permutation(n)
    idx = order[pos * size:(pos + 1) * size]
    p, o, loss = step(p, o, x_host[idx], y_host[idx])
  jax.block_until_ready(loss)
  bare_loop = tc.steps / (time.perf_counter() - t0)
  print(f"3. whole loop: gf.studies.train {loop:.0f} steps/s (logging, chunked transfers, evaluation); "
        f"Python loop of bare jitted steps {bare_loop:.0f} steps/s; "
        f"speed-up {loop / bare_loop:.2f}x")


if __name__ == "__main__":
  main()
