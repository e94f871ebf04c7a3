"""The monitored training step against the user's bare step, in one run.

Two models a user writes:
1. an NNX MLP (10 Linear layers of 256, tanh, batch 64, adam) trained with
   ``nnx.Optimizer`` under ``nnx.jit``: ``gf.nnx_value_and_grad`` against
   ``nnx.value_and_grad``;
2. a linen pre-LN transformer with ``nn.scan`` over 4 blocks (width 64,
   batch 16, sequence 8, adam): ``gf.value_and_grad`` against
   ``jax.value_and_grad`` under ``jax.jit``.

For each: the monitored step with statistics on every step, and with
``every=10`` averaged over 10 consecutive steps, against the bare step (per
jitted call, median of paired rounds); then whole training loops of 200
steps (the monitored one logging every 10th step to a JSON Lines file on the
host, by ``gf.log_step`` and by ``gf.StepLogger``) in steps per second.
Then the same transformer at width 128, batch 32 x 32 (taps of ~27 MB, more
than the CPU's caches hold), statistics on every step only. Targets: every
step <= 1.10x, every=10 <= 1.02x. Last, the ``norms`` tier with the flight
recorder (``gf.watch.step_norms`` and ``FlightRecorder.update``, window 64)
on every step of both models, and the ``spectra`` tier (``WeightSpectra``, one
power-iteration pair per weight matrix) on the transformer, against the same
bare step (targets <= 1.03x). ``--norms`` runs only these.

Run: python benchmarks/bench_watch.py
"""

import functools
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import gradflow_jax as gf  # noqa: E402
from _timing import paired_ratio  # noqa: E402


def _ce(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


class MLP(nnx.Module):
  def __init__(self, rngs):
    sizes = [128] + [256] * 10
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])
    self.head = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x):
    for layer in self.layers:
      x = jnp.tanh(layer(x))
    return self.head(x)


def nnx_steps():
  """(bare, every1, every10) step functions ``f(x, y, step)`` on their own
  model copies (the same weights)."""
  def make(vg, static=False):
    model = MLP(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @functools.partial(nnx.jit, static_argnames="measure")
    def step(model, opt, x, y, i, measure=None):
      out = vg(model, x, y, i, measure)
      opt.update(model, out[1])
      return out[0], out[2:]
    if static:  # measure decided on the host: two compiled steps
      return lambda x, y, i: step(model, opt, x, y, jnp.int32(i), measure=i % 10 == 0)
    return lambda x, y, i: step(model, opt, x, y, jnp.int32(i))

  loss = lambda m, x, y: _ce(m(x), y)
  bare = make(lambda m, x, y, i, measure: nnx.value_and_grad(loss)(m, x, y))
  tanh = {f"layers/{i}": "tanh" for i in range(10)}
  watched = lambda every, static=False: make(lambda m, x, y, i, measure: gf.nnx_value_and_grad(
      loss, every=every, activations=tanh)(m, x, y, step=i, measure=measure), static)
  x = jax.random.normal(jax.random.key(1), (64, 128))
  y = jax.random.randint(jax.random.key(2), (64,), 0, 10)
  return bare, watched(1), watched(10), watched(1, static=True), x, y


def transformer_steps(batch=16, seq=8, width=64):
  import linen_transformer
  module = linen_transformer.Transformer(depth=4, dim=width)
  x = jax.random.normal(jax.random.key(1), (batch, seq, 12))
  y = jnp.arange(batch) % 4
  variables = jax.jit(module.init)(jax.random.key(0), x)
  tx = optax.adam(1e-3)

  def loss(p, x, y):
    return _ce(module.apply({"params": p}, x), y)

  def make(vg, static=False):
    state = {"params": variables["params"], "opt": tx.init(variables["params"])}

    @functools.partial(jax.jit, static_argnames="measure")
    def step(params, opt_state, x, y, i, measure=None):
      out = vg(params, x, y, i, measure)
      updates, opt_state = tx.update(out[1], opt_state, params)
      return optax.apply_updates(params, updates), opt_state, out[0], out[2:]

    def run(x, y, i):  # the same parameters every call: the cost is timed, not training
      measure = i % 10 == 0 if static else None
      return step(state["params"], state["opt"], x, y, jnp.int32(i), measure=measure)[2:]
    return run

  bare = make(lambda p, x, y, i, measure: jax.value_and_grad(loss)(p, x, y))
  watched = lambda every, static=False: make(lambda p, x, y, i, measure: gf.value_and_grad(
      loss, every=every)(p, x, y, step=i, measure=measure), static)
  return bare, watched(1), watched(10), watched(1, static=True), x, y


def measure(label, bare, every1, every10, static10, x, y):
  steps = list(range(10))  # Python ints: each step function makes its own jnp.int32
  ten = lambda f: (lambda x, y: [f(x, y, s) for s in steps][-1])
  r1, t1, tb = paired_ratio(ten(every1), ten(bare), x, y, number=2, repeat=31)
  r10, t10, _ = paired_ratio(ten(every10), ten(bare), x, y, number=2, repeat=31)
  rs, ts, _ = paired_ratio(ten(static10), ten(bare), x, y, number=2, repeat=31)
  print(f"{label}: bare step {tb / 10 * 1e3:.3f} ms")
  print(f"  statistics every step         : {t1 / 10 * 1e3:.3f} ms, ratio {r1:.3f} "
        "(target <= 1.10)")
  print(f"  every=10, traced step (cond)  : {t10 / 10 * 1e3:.3f} ms, ratio {r10:.3f} "
        "(10-step average; target <= 1.02)")
  print(f"  measure=(step % 10 == 0) static: {ts / 10 * 1e3:.3f} ms, ratio {rs:.3f} "
        "(10-step average; target <= 1.02)")
  loop_rates(bare, static10, x, y)


def loop_rates(bare, watched, x, y, n=200):
  """Steps per second of whole loops: bare, and monitored (measure every
  10th step) with the host logging each measured step to JSON Lines, by
  ``gf.log_step`` (reads the step it just dispatched: the device idles
  meanwhile) and by ``gf.StepLogger`` (writes it one logged step late)."""
  def bare_loop():
    for i in range(n):
      out = bare(x, y, i)
    jax.block_until_ready(out)

  def log_step_loop():
    with tempfile.TemporaryDirectory() as d, gf.watch.JsonlWriter(os.path.join(d, "log.jsonl")) as w:
      for i in range(n):
        out = watched(x, y, i)
        if i % 10 == 0:
          gf.log_step(w, i, out[-1][0], None)
      jax.block_until_ready(out)

  def step_logger_loop():
    with tempfile.TemporaryDirectory() as d:
      with gf.StepLogger(gf.watch.JsonlWriter(os.path.join(d, "log.jsonl"))) as log:
        for i in range(n):
          out = watched(x, y, i)
          if i % 10 == 0:
            log(i, out[-1][0])
        jax.block_until_ready(out)
  rates = {}
  loops = (("bare", bare_loop), ("log_step", log_step_loop), ("StepLogger", step_logger_loop))
  for name, loop in loops * 2:  # the 2nd round is warm
    t0 = time.perf_counter()
    loop()
    rates[name] = n / (time.perf_counter() - t0)
  print(f"  whole loop of {n} steps: bare {rates['bare']:.0f} steps/s; monitored, logging to "
        f"JSONL with log_step {rates['log_step']:.0f} steps/s "
        f"({rates['bare'] / rates['log_step']:.3f}x), with StepLogger "
        f"{rates['StepLogger']:.0f} steps/s ({rates['bare'] / rates['StepLogger']:.3f}x)")


def every_step_only(label, bare, every1, _every10, _static10, x, y):
  """A larger model, where the taps outgrow the CPU's caches: statistics on
  every step against the bare step (one call a round)."""
  r, t1, tb = paired_ratio(lambda x, y: every1(x, y, 0), lambda x, y: bare(x, y, 0), x, y,
                           number=1, repeat=15)
  print(f"{label}: bare step {tb * 1e3:.1f} ms, statistics every step {t1 * 1e3:.1f} ms, "
        f"ratio {r:.3f} (target <= 1.10)")


def recorded_steps(kind, batch=64):
  """(bare, recorded) step functions ``f(x, y, step)``: the user's own step,
  and the same step also recording the ``norms`` tier in a flight recorder
  (NNX: the update is new minus old parameters, read around
  ``optimizer.update``; linen: optax's updates)."""
  recorder = gf.watch.FlightRecorder(window=64)
  if kind == "nnx":
    loss = lambda m, x, y: _ce(m(x), y)

    def make(record):
      model = MLP(nnx.Rngs(0))
      opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
      rec = {"state": recorder.init(nnx.state(model, nnx.Param))}

      @nnx.jit
      def step(model, opt, rec, x, y, i):
        old = gf.watch.snapshot(nnx.state(model, nnx.Param))
        value, grads = nnx.value_and_grad(loss)(model, x, y)
        opt.update(model, grads)
        if record:
          new = nnx.state(model, nnx.Param)
          updates = jax.tree.map(lambda a, b: a - b, gf.watch.snapshot(new), old)
          rec = recorder.update(rec, i, gf.watch.step_norms(value, grads, old, updates))
        return value, rec

      def run(x, y, i):
        value, rec["state"] = step(model, opt, rec["state"], x, y, jnp.int32(i))
        return value
      return run
    x = jax.random.normal(jax.random.key(1), (batch, 128))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    return make(False), make(True), x, y
  import linen_transformer
  module = linen_transformer.Transformer(depth=4, dim=64)
  x = jax.random.normal(jax.random.key(1), (16, 8, 12))
  y = jnp.arange(16) % 4
  params = jax.jit(module.init)(jax.random.key(0), x)["params"]
  tx = optax.adam(1e-3)
  loss = lambda p, x, y: _ce(module.apply({"params": p}, x), y)

  spectra = gf.watch.WeightSpectra()

  def make(record):
    state = {"opt": tx.init(params),
             "rec": (spectra.init(params, jax.random.key(0)) if record == "spectra"
                     else recorder.init(params, adam=record == "optimizer"))}

    @jax.jit
    def step(params, opt_state, rec, x, y, i):
      value, grads = jax.value_and_grad(loss)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      if record == "spectra":
        rec = spectra.update(rec, params)
      elif record == "optimizer":
        rec = recorder.update(rec, i, gf.watch.step_norms(value, grads, params, updates),
                              gf.watch.adam_health(opt_state, grads))
      elif record:
        rec = recorder.update(rec, i, gf.watch.step_norms(value, grads, params, updates))
      return optax.apply_updates(params, updates), opt_state, rec, value

    def run(x, y, i):  # the same parameters every call: the cost is timed, not training
      out = step(params, state["opt"], state["rec"], x, y, jnp.int32(i))
      state["rec"] = out[2]
      return out[3]
    return run
  if kind in ("spectra", "optimizer"):
    return make(False), make(kind), x, y
  return make(False), make(True), x, y


def norms_tier(label, bare, recorded, x, y, what="norms tier + flight recorder", target=1.03):
  steps = list(range(10))
  ten = lambda f: (lambda x, y: [f(x, y, s) for s in steps][-1])
  r, t, tb = paired_ratio(ten(recorded), ten(bare), x, y, number=2, repeat=31)
  print(f"{label}: bare step {tb / 10 * 1e3:.3f} ms, {what} every step "
        f"{t / 10 * 1e3:.3f} ms, ratio {r:.3f} (target <= {target})")


def tiers():
  """The forensics tiers, each against the bare step. The norms tier reads
  the gradients, parameters and updates once more (three passes over the
  weights, whatever the batch): its ratio falls as the batch grows."""
  for batch in (64, 256, 1024):
    norms_tier(f"NNX MLP 10x256, batch {batch}, nnx.Optimizer(adam)",
               *recorded_steps("nnx", batch))
  transformer = "linen scan transformer 4x64, batch 16x8, adam"
  norms_tier(transformer, *recorded_steps("linen"))
  norms_tier(transformer, *recorded_steps("spectra"),
             what="spectra tier (one power-iteration pair per matrix)")
  norms_tier(transformer, *recorded_steps("optimizer"),
             what="norms + optimizer tiers in the recorder", target=1.05)


def main():
  print(f"backend: {jax.default_backend()}, devices: {jax.device_count()}")
  measure("NNX MLP 10x256, batch 64, nnx.Optimizer(adam)", *nnx_steps())
  measure("linen scan transformer 4x64, batch 16x8, adam", *transformer_steps())
  every_step_only("linen scan transformer 4x128, batch 32x32, adam",
                  *transformer_steps(batch=32, seq=32, width=128))
  tiers()


if __name__ == "__main__":
  tiers() if sys.argv[1:] == ["--norms"] else main()  # --norms: the forensics tiers only
