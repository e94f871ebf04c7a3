"""A scan-over-layers pre-LN transformer in Flax linen (``nn.scan`` over
blocks of attention and a GELU MLP, each residual). Every tap inside the
scanned block comes out once per layer, named ``.../layer_i``.

  python scripts/analyze.py diagnose --model examples/linen_transformer.py:make
"""

import jax
import jax.numpy as jnp
from flax import linen as nn


class Block(nn.Module):
  dim: int
  heads: int = 2

  @nn.compact
  def __call__(self, x, _):
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h)
    h = nn.LayerNorm()(x)
    x = x + nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(h)))
    return x, None


class Transformer(nn.Module):
  depth: int = 4
  dim: int = 32
  classes: int = 4

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.dim)(x)
    blocks = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=self.depth)
    x, _ = blocks(self.dim, name="blocks")(x, None)
    return nn.Dense(self.classes)(nn.LayerNorm()(x).mean(axis=1))


def make(depth: int = 4, width: int = 32):
  x = jax.random.normal(jax.random.key(1), (16, 8, 12))
  y = jnp.arange(16) % 4
  model = Transformer(depth=depth, dim=width)
  return model, jax.jit(model.init)(jax.random.key(0), x), (x, y)
