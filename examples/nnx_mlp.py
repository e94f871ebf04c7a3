"""A Flax NNX MLP with Dropout and BatchNorm, analysed in training mode
(``model.train()``): dropout draws from the model's own ``nnx.Rngs`` (fixed
key), batch statistics come from the batch; neither is differentiated.

  python scripts/analyze.py diagnose --model examples/nnx_mlp.py:make
"""

import jax.numpy as jnp
from flax import nnx

import gradflow_jax as gf


class MLP(nnx.Module):
  def __init__(self, sizes, rngs: nnx.Rngs, dropout: float = 0.1):
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:-1])])
    self.norms = nnx.List([nnx.BatchNorm(b, rngs=rngs) for b in sizes[1:-1]])
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.head = nnx.Linear(sizes[-2], sizes[-1], rngs=rngs)

  def __call__(self, x):
    for layer, norm in zip(self.layers, self.norms):
      x = self.dropout(nnx.relu(norm(layer(x))))
    return self.head(x)


def make():
  data = gf.load_digits()
  x, y = jnp.asarray(data.x_train[:64]), jnp.asarray(data.y_train[:64])
  model = MLP([64, 128, 128, 128, 10], nnx.Rngs(0))
  model.train()
  return model, None, (x, y)
