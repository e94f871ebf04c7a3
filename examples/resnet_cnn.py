"""A ResNet-style CNN in Flax linen, pre-activation blocks
x + Conv(relu(Norm(x))) (``make``, GroupNorm) or x + Conv(relu(x))
(``make_unnormalized``), He-initialised 3x3 convolutions.

Expected at init (De & Smith 2020, "Batch Normalization Biases Residual
Blocks Towards the Identity Function in Deep Networks", NeurIPS, section 2):
with the normalization at the start of each branch, every branch adds O(1)
variance to the skip path, so the residual stream's variance grows linearly
with depth, each block's Jacobian is about I + O(1/sqrt(l)) and the
input-output Jacobian's mean squared singular value grows about linearly
(about (q0 + L) / q0 for stream variance q0 after the stem). Without it the
branch is as large as the stream: variance and that mean square both double
per block (2^L). GroupNorm is used so that every example's Jacobian is its
own (BatchNorm in training mode couples the examples; the study handles
that too, with the batch held fixed around each example).

  python scripts/analyze.py depth --model examples/resnet_cnn.py:make --depths 2,4,8,16
  python scripts/analyze.py depth --model examples/resnet_cnn.py:make_unnormalized --depths 2,4,8,16
"""

import jax
import jax.numpy as jnp
from flax import linen as nn


class ResNet(nn.Module):
  depth: int
  width: int
  norm: bool
  classes: int = 10

  @nn.compact
  def __call__(self, x):
    he = nn.initializers.he_normal()
    x = nn.Conv(self.width, (3, 3), name="stem")(x)
    for i in range(self.depth):
      h = nn.GroupNorm(num_groups=4, name=f"norm{i}")(x) if self.norm else x
      x = x + nn.Conv(self.width, (3, 3), kernel_init=he, name=f"conv{i}")(nn.relu(h))
    return nn.Dense(self.classes, name="readout")(x.mean(axis=(1, 2)))


def _make(depth, width, key, norm):
  key = jax.random.key(0) if key is None else key
  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 3))
  y = jnp.arange(8) % 10
  model = ResNet(depth, width, norm)
  return model, model.init(key, x), (x, y)  # eager: its small ops compile once for every depth


def make(depth: int = 4, width: int = 16, key=None):
  """GroupNorm at the start of every residual branch."""
  return _make(depth, width, key, norm=True)


def make_unnormalized(depth: int = 4, width: int = 16, key=None):
  """No normalization."""
  return _make(depth, width, key, norm=False)
