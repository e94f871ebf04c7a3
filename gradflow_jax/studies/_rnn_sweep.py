"""The RNN sweep: gradients through time for each scale of W."""

from __future__ import annotations

import jax

from gradflow_jax.measure._through_time import rnn_through_time
from gradflow_jax.models._rnn import init_rnn, RNNConfig


# The RNN sweep's cost model, measured on 2 CPU cores (jax 0.10; /tmp timings of
# run_rnn_sweep at hidden 256/128/512, T 40/400/20, batch 8): each scale's
# T x batch Jacobian products and SVDs of hidden x hidden matrices run at about
# this many "hidden^3 units" per second (1.3e9-3.3e9 measured); compiling and
# the first run add up to FIXED_SECONDS (3-30 s measured).
CUBE_UNITS_PER_SECOND = 1.5e9
FIXED_SECONDS = 10.0


def estimated_bytes(hidden: int, steps: int, batch: int) -> int:
  """Peak memory, about: the (T, batch, hidden, hidden) stack of Jacobians
  dh_T/dh_t, its reversed copy, its square and the SVD's workspace (6x)."""
  return 4 * 6 * steps * batch * hidden**2


def estimated_seconds(hidden: int, steps: int, batch: int, scales: int) -> float:
  """Wall time, roughly (within about 2x where measured)."""
  return FIXED_SECONDS + scales * steps * batch * hidden**3 / CUBE_UNITS_PER_SECOND


def run_rnn_sweep(cfg: RNNConfig, scales, steps: int = 50, batch: int = 8, seed: int = 0,
                  on_run=None) -> list[dict]:
  """``rnn_through_time`` for each scale of W (same seed and inputs): the change
  from vanishing to exploding as the scale crosses 1/gamma. Host results."""
  if steps < 2 or batch < 1:
    raise ValueError(f"expected steps >= 2 and batch >= 1, got {steps} and {batch}")
  xs = jax.random.normal(jax.random.key(seed + 1), (steps, batch, cfg.in_dim))
  runs = []
  for scale in scales:
    c = cfg.replace(scale=float(scale))
    if on_run is not None:
      on_run(f"{c.scale_kind} {scale:g}")
    r = jax.device_get(rnn_through_time(c, init_rnn(jax.random.key(seed), c), xs))
    runs.append({"activation": c.activation, "scale": float(scale), "scale_kind": c.scale_kind,
                 "gamma": c.act.max_derivative, **r._asdict()})
  return runs
