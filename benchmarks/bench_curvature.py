"""What the curvature and noise tiers cost, in bare training steps, in one run.

Two models: a linen pre-LN transformer with ``nn.scan`` over 4 blocks
(width 64, batch 16 x 8, adam; ``examples/linen_transformer.py``) and the
edge-of-stability MLP (2 x 64 tanh on 1000 digits examples, full batch,
gradient descent). For each, per measurement, the median time of:
sharpness by 20 Lanczos steps (``gf.measure.hessian_top``), each leaf's
sharpness (``block_sharpness``, 20 steps), Adam's preconditioned sharpness
(transformer), the gradient noise scale from 4 micro-batches
(``noise_scale_from_microbatches``), each divided by the bare step's time
(value_and_grad + the optimizer update, jitted); then the step with the
``Curvature`` tier at ``every=10`` against the bare step, averaged over 10
consecutive steps (paired).

Run: python benchmarks/bench_curvature.py
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import gradflow_jax as gf  # noqa: E402
from _timing import interleaved, paired_ratio  # noqa: E402
from gradflow_jax.studies import _edge_of_stability as eos  # noqa: E402

M = gf.measure


def transformer():
  import linen_transformer
  module = linen_transformer.Transformer(depth=4, dim=64)
  x = jax.random.normal(jax.random.key(1), (16, 8, 12))
  y = jnp.arange(16) % 4
  params = jax.jit(module.init)(jax.random.key(0), x)["params"]
  loss = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
      module.apply({"params": p}, b[0]), b[1]).mean()
  return "linen scan transformer 4x64, batch 16x8, adam", loss, params, (x, y), optax.adam(1e-3)


def edge_mlp():
  data = gf.load_digits()
  batch = (jnp.asarray(data.x_train[:1000]), jax.nn.one_hot(data.y_train[:1000], 10))
  params = eos._init(jax.random.key(0), [64, 64, 64, 10])
  return ("tanh MLP 2x64, full batch of 1000 digits, gradient descent", eos._loss_fn("tanh"),
          params, batch, optax.sgd(0.2))


def run(label, loss, params, batch, tx):
  opt_state = tx.init(params)
  for _ in range(3):  # Adam's moments filled
    updates, opt_state = tx.update(jax.grad(loss)(params, batch), opt_state, params)
  adam = "adam" in label

  @jax.jit
  def bare(params, opt_state, batch):
    value, grads = jax.value_and_grad(loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  # params and batch are arguments, never closure constants XLA could fold
  measurements = {
      "bare step": lambda p, b: bare(p, opt_state, b),
      "sharpness, 20 Lanczos steps": jax.jit(
          lambda p, b: M.hessian_top(loss, p, b, steps=20)),
      "each leaf's sharpness, 20 steps": jax.jit(
          lambda p, b: M.block_sharpness(loss, p, b, steps=20)),
      "noise scale, 4 micro-batches": jax.jit(
          lambda p, b: M.noise_scale_from_microbatches(jax.grad(loss), p, b, 4)),
  }
  if adam:
    pre = M.adam_preconditioner(gf.watch.find_adam_state(opt_state))
    measurements["preconditioned sharpness, 20 steps"] = jax.jit(
        lambda p, b: M.preconditioned_sharpness(loss, p, b, pre, steps=20))
  times = interleaved(measurements, params, batch, number=3, repeat=9)
  n = sum(int(np.size(x)) for x in jax.tree.leaves(params))
  print(f"{label} ({n} parameters): bare step {times['bare step'] * 1e3:.2f} ms")
  for name, t in times.items():
    if name != "bare step":
      print(f"  {name} = {t / times['bare step']:.1f} bare steps ({t * 1e3:.1f} ms)")

  curvature = gf.watch.Curvature(every=10, steps=20, adam=adam)

  @jax.jit
  def watched(params, opt_state, c, i, batch):
    value, grads = jax.value_and_grad(loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    c = curvature.update(c, loss, params, batch, i, lr=1e-3 if adam else 0.2,
                         opt_state=opt_state)
    return optax.apply_updates(params, updates), opt_state, value, c

  state = {"c": curvature.init(params)}

  def ten_watched(_):
    for i in range(10):  # the same parameters each call: the cost is timed
      out = watched(params, opt_state, state["c"], jnp.int32(i), batch)
      state["c"] = out[3]
    return out[2]

  def ten_bare(_):
    for _ in range(10):
      out = bare(params, opt_state, batch)
    return out[2]
  ratio, t, tb = paired_ratio(ten_watched, ten_bare, 0, number=1, repeat=15)
  print(f"  step with the curvature tier every 10 steps: {ratio:.2f}x the bare step "
        f"(10-step average {t / 10 * 1e3:.2f} ms against {tb / 10 * 1e3:.2f} ms)")


def main():
  print(f"backend: {jax.default_backend()}, devices: {jax.device_count()}")
  run(*transformer())
  run(*edge_mlp())


if __name__ == "__main__":
  main()
