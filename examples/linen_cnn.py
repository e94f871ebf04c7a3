"""An example model for `analyze.py diagnose --model examples/linen_cnn.py:make`:
a small Flax linen CNN on 8x8 digits."""

import jax
import jax.numpy as jnp
from flax import linen as nn

import gradflow_jax as gf


class CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], 8, 8, 1)
    x = gf.tap("conv1_act", nn.relu(nn.Conv(8, (3, 3))(x)))
    x = gf.tap("conv2_act", nn.relu(nn.Conv(8, (3, 3))(x)))
    x = x.reshape(x.shape[0], -1)
    x = gf.tap("dense_act", nn.relu(nn.Dense(32)(x)))
    return nn.Dense(10)(x)


def make():
  data = gf.load_digits()
  x, y = jnp.asarray(data.x_train[:64]), jnp.asarray(data.y_train[:64])
  model = CNN()
  return model, model.init(jax.random.key(0), x), (x, y)
