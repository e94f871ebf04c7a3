"""A small Flax linen CNN on 8x8 digits with BatchNorm in training mode (batch
statistics, ``batch_stats`` updated and discarded by the analysis).

  python scripts/analyze.py diagnose --model examples/linen_cnn.py:make
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

import gradflow_jax as gf


class CNN(nn.Module):
  train: bool = True

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], 8, 8, 1)
    for features in (8, 8):
      x = nn.Conv(features, (3, 3))(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not self.train)(x))
    x = x.reshape(x.shape[0], -1)
    x = gf.tap("dense_act", nn.relu(nn.Dense(32)(x)))  # any tensor can be tapped by hand
    return nn.Dense(10)(x)


def make():
  data = gf.load_digits()
  x, y = jnp.asarray(data.x_train[:64]), jnp.asarray(data.y_train[:64])
  model = CNN()
  return model, jax.jit(model.init)(jax.random.key(0), x), (x, y)
