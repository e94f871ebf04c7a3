"""The edge of stability, reproduced on the digits data (Cohen et al. 2021,
"Gradient descent on neural networks typically occurs at the edge of
stability"): the same small tanh network trained by full-batch gradient
descent at several learning rates, its sharpness (the loss Hessian's top
eigenvalue, :class:`~gradflow_jax.watch.Curvature`) measured every few steps.
Sharpness rises until it reaches 2 / lr and then hovers there, while the loss
keeps falling, but no longer monotonically."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax._data import Dataset
from gradflow_jax.watch import _curvature

CHUNK = 100  # steps per compiled scan (the host reports progress between chunks)


@dataclasses.dataclass(frozen=True)
class EdgeConfig:
  """Full-batch gradient descent on ``examples`` training examples with the
  mean squared error to one-hot labels (the loss of Cohen et al.'s figures),
  a tanh MLP of ``depth`` hidden layers of ``width``; sharpness every
  ``every`` steps by ``lanczos_steps`` warm-started Lanczos steps."""
  lrs: tuple = (0.1, 0.2, 0.4)
  steps: int = 1500
  every: int = 10
  examples: int = 1000
  width: int = 64
  depth: int = 2
  activation: str = "tanh"
  lanczos_steps: int = 20
  seed: int = 0

  def __post_init__(self):
    for name in ("steps", "every", "examples", "width", "depth", "lanczos_steps"):
      v = getattr(self, name)
      if not (isinstance(v, int) and v >= 1):
        raise ValueError(f"expected {name} >= 1, got {v!r}")
    if not self.lrs or not all(np.isfinite(lr) and lr > 0 for lr in self.lrs):
      raise ValueError(f"expected learning rates > 0, got {self.lrs}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"expected --activation in {', '.join(ACTIVATIONS)} for "
                       f"edge-of-stability, got {self.activation!r}")


ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu,
               "silu": jax.nn.silu}


def _init(key, sizes):
  """LeCun-normal weights (variance 1 / fan_in), zero biases."""
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros((b,))}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def _loss_fn(activation: str):
  act = ACTIVATIONS[activation]

  def loss(params, batch):
    x, y = batch
    for p in params[:-1]:
      x = act(x @ p["w"] + p["b"][None])
    out = x @ params[-1]["w"] + params[-1]["b"][None]
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, -1))
  return loss


def edge_of_stability(data: Dataset, config: EdgeConfig = EdgeConfig(),
                      on_chunk=None) -> dict:
  """Trains the network once per learning rate (the same initial weights)
  and returns the results.json layout: per run ``lr``, ``threshold`` (2 /
  lr), ``loss`` per step, ``sharpness_steps``, ``sharpness`` and
  ``converged`` at each measured step, ``loss_increases`` (steps whose loss
  exceeded the step before's: 0 on a monotone run), ``edge_sharpness``
  (the median converged sharpness over the last quarter of the steps) and
  ``seconds``. ``on_chunk(run_index, steps_done)`` reports progress."""
  n = min(config.examples, len(data.x_train))
  batch = (jnp.asarray(data.x_train[:n], jnp.float32),
           jax.nn.one_hot(jnp.asarray(data.y_train[:n]), data.classes))
  sizes = [data.x_train.shape[1]] + [config.width] * config.depth + [data.classes]
  params0 = _init(jax.random.key(config.seed), sizes)
  loss = _loss_fn(config.activation)
  curvature = _curvature.Curvature(every=config.every, steps=config.lanczos_steps)

  @jax.jit
  def chunk(params, state, lr, start):
    def body(carry, i):
      params, state = carry
      value, grads = jax.value_and_grad(loss)(params, batch)
      state = curvature.update(state, loss, params, batch, i, lr=lr)
      params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
      return (params, state), (value, state.sharpness, state.converged, state.measured)
    return jax.lax.scan(body, (params, state), start + jnp.arange(CHUNK))

  runs = []
  for r, lr in enumerate(config.lrs):
    t0 = time.perf_counter()
    params, state = params0, curvature.init(params0, jax.random.key(config.seed + 1))
    pieces = []
    for start in range(0, config.steps, CHUNK):
      (params, state), out = chunk(params, state, jnp.float32(lr), jnp.int32(start))
      pieces.append(jax.device_get(out))
      if on_chunk is not None:
        on_chunk(r, min(start + CHUNK, config.steps))
    losses, sharp, ok, measured = (np.concatenate([p[k] for p in pieces])[:config.steps]
                                   for k in range(4))
    steps = np.flatnonzero(measured)
    sharp, ok = sharp[steps].astype(float), ok[steps].astype(bool)
    late = (steps >= 0.75 * config.steps) & ok
    runs.append({
        "lr": lr, "threshold": 2.0 / lr, "loss": losses.astype(float).tolist(),
        "sharpness_steps": steps.tolist(), "sharpness": sharp.tolist(),
        "converged": ok.tolist(),
        "loss_increases": int(np.sum(np.diff(losses) > 0)),
        "edge_sharpness": float(np.median(sharp[late])) if late.any() else None,
        "final_loss": float(losses[-1]), "seconds": time.perf_counter() - t0})
  return {"settings": {**dataclasses.asdict(config), "lrs": list(config.lrs),
                       "examples": n, "loss": "mean squared error to one-hot labels",
                       "optimizer": "full-batch gradient descent"},
          "runs": runs}
