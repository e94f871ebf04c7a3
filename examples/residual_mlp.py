"""A residual ReLU MLP, x + a * W2 relu(W1 x), with the branch scale
a = 1/sqrt(depth) (``make``) or a = 1 (``make_unscaled``).

W1 is He-initialised and W2 LeCun-initialised, so at init each block's
Jacobian I + a W2 D W1 multiplies E||J v||^2 by exactly (1 + a^2): the
input-output Jacobian's mean squared singular value is (1 + 1/L)^L <= e with
the 1/sqrt(L) scale, and 2^L without it (Hanin & Rolnick 2018, "How to start
training: the effect of initialization and architecture"; Zhang, Dauphin &
Ma 2019, "Fixup initialization"). The factories carry this law as
``gradflow_theory``; ``depth`` draws it dashed beside the measurement.

  python scripts/analyze.py depth --model examples/residual_mlp.py:make --depths 2,4,8,16,32
  python scripts/analyze.py depth --model examples/residual_mlp.py:make_unscaled --depths 2,4,8,16,32
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from gradflow_jax.studies import residual_law


class ResidualMLP(nn.Module):
  depth: int
  width: int
  scale: float
  classes: int = 10

  @nn.compact
  def __call__(self, x):
    for i in range(self.depth):
      h = nn.relu(nn.Dense(self.width, kernel_init=nn.initializers.he_normal(),
                           name=f"block{i}_in")(x))
      x = x + self.scale * nn.Dense(self.width, name=f"block{i}_out")(h)
    return nn.Dense(self.classes, name="readout")(x)


def _make(depth, width, key, scaled):
  key = jax.random.key(0) if key is None else key
  kx, kp = jax.random.split(jax.random.fold_in(key, 1))
  x = jax.random.normal(jax.random.key(1), (16, width))
  y = jnp.arange(16) % 10
  model = ResidualMLP(depth, width, depth ** -0.5 if scaled else 1.0)
  return model, model.init(kp, x), (x, y)  # eager: its small ops compile once for every depth


def make(depth: int = 8, width: int = 64, key=None):
  """Branches scaled by 1/sqrt(depth)."""
  return _make(depth, width, key, scaled=True)


def make_unscaled(depth: int = 8, width: int = 64, key=None):
  """Branches not scaled."""
  return _make(depth, width, key, scaled=False)


make.gradflow_theory = residual_law(1.0, scaled=True)
make_unscaled.gradflow_theory = residual_law(1.0, scaled=False)
