"""What a ``train --model`` run will cost, before it runs: peak memory and
wall time from the model's parameters and tap sizes (the CLI's size guard)."""

from __future__ import annotations

import jax
import numpy as np

from gradflow_jax._data import Dataset
from gradflow_jax.studies._model_train import ModelTrainConfig


# The cost model of a --model run, measured on 2 CPU cores (jax 0.10):
# `train --model examples/nnx_mlp.py:make` took 10.9 s for 50 steps and
# 12.1 s for 450 (3 ms a step, the host loop's own cost at 43k parameters);
# the arithmetic is counted at FLOPS_PER_SECOND.
FIXED_SECONDS = 10.0
STEP_SECONDS = 3e-3
FLOPS_PER_SECOND = 2e10


def estimated_bytes(params, tap_shapes: dict, examples: int, tc: ModelTrainConfig,
                    data: Dataset) -> int:
  """Peak memory of a run, about: parameters, gradients, optimizer moments and
  the update (5x); a step's taps and their gradients with the statistics'
  temporaries (6x) and the test set's forward pass; the data set; and what the
  run keeps per step (the loss) and per logged step (every tap's statistics
  and histograms). ``tap_shapes`` are the taps of ``examples`` examples."""
  params_n = sum(int(np.size(a)) for a in jax.tree.leaves(params))
  per_example = sum(int(np.prod(s.shape)) for s in tap_shapes.values()) / max(examples, 1)
  batch = min(tc.batch_size, len(data.x_train))
  n_data = sum(int(np.size(a)) for a in data[:4])
  logged = -(-tc.steps // tc.every)
  per_log = len(tap_shapes) * (2 * 64 + 32) + 4 * len(jax.tree.leaves(params))
  return int(4 * (5 * params_n + per_example * (6 * batch + len(data.x_test)) + n_data)
             + 128 * tc.steps + 4 * per_log * logged)


def estimated_seconds(params, tap_shapes: dict, examples: int, tc: ModelTrainConfig,
                      data: Dataset) -> float:
  """Wall time of a run, roughly: a fixed cost (imports, compiling), then per
  step the host loop's cost and the arithmetic (6 flops per parameter and
  example, 20 per tapped value and example)."""
  params_n = sum(int(np.size(a)) for a in jax.tree.leaves(params))
  per_example = sum(int(np.prod(s.shape)) for s in tap_shapes.values()) / max(examples, 1)
  batch = min(tc.batch_size, len(data.x_train))
  flops = batch * (6 * params_n + 20 * per_example)
  return FIXED_SECONDS + tc.steps * (STEP_SECONDS + flops / FLOPS_PER_SECOND)
