"""The RNN sweep: gradients through time for each scale of W."""

from __future__ import annotations

import jax

from gradflow_jax.measure._through_time import rnn_through_time
from gradflow_jax.models._rnn import init_rnn, RNNConfig


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
