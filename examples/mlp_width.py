"""A ReLU MLP in Flax NNX in the standard parametrisation (LeCun-normal
weights, one learning rate), for width studies: the muP coordinate check.

Expected (Yang et al. 2021, "Tuning Large Neural Networks via Zero-Shot
Hyperparameter Transfer", figure 5; Yang & Hu 2021, "Feature Learning in
Infinite-Width Neural Networks"): at init every tap's coordinates are of
the same size at every width (log-log slope about 0); after an Adam step,
each hidden-to-hidden layer moves every coordinate of its output by about
lr x fan_in, so the change of the hidden and output taps grows like width
(slope about 1), while the first layer (fan-in fixed by the input) does not.

  python scripts/analyze.py width --model examples/mlp_width.py:make --widths 64,128,256,512,1024
"""

import jax
import jax.numpy as jnp
from flax import nnx


class MLP(nnx.Module):
  def __init__(self, depth: int, width: int, rngs: nnx.Rngs, in_dim: int = 32, classes: int = 10):
    sizes = [in_dim] + [width] * depth
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.readout = nnx.Linear(width, classes, rngs=rngs)

  def __call__(self, x):
    for layer in self.layers:
      x = nnx.relu(layer(x))
    return self.readout(x)


def make(depth: int = 3, width: int = 64, key=None):
  key = jax.random.key(0) if key is None else key
  x = jax.random.normal(jax.random.key(1), (32, 32))
  y = jnp.arange(32) % 10
  return MLP(depth, width, nnx.Rngs(key)), None, (x, y)
