"""Pre-LN and post-LN transformer block stacks in Flax linen (``nn.scan`` over
blocks of self-attention and a GELU MLP), for depth studies.

  pre-LN  (``make_pre``):  x = x + f(LN(x)), a final LN before the read-out
  post-LN (``make_post``): x = LN(x + f(x))

Expected at init (Xiong et al. 2020, "On Layer Normalization in the
Transformer Architecture", ICML, section 3 and figure 3; Liu et al. 2020,
"Understanding the Difficulty of Training Transformers", EMNLP): in post-LN
the gradient reaching the lower layers shrinks as the stack gets deeper,
because every LN on the path divides the backward signal by the norm of a
residual sum; in pre-LN the identity path carries it unchanged. In a depth
study the ratio ||dL/d first tap|| / ||dL/d last tap|` falls with depth for
post-LN and does not for pre-LN.

  python scripts/analyze.py depth --model examples/transformer_ln.py:make_pre --depths 2,4,8,16,32
  python scripts/analyze.py depth --model examples/transformer_ln.py:make_post --depths 2,4,8,16,32
"""

import jax
import jax.numpy as jnp
from flax import linen as nn


class Block(nn.Module):
  dim: int
  post_ln: bool
  heads: int = 2

  @nn.compact
  def __call__(self, x, _):
    attn = nn.MultiHeadDotProductAttention(num_heads=self.heads)
    mlp = lambda h: nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(h)))
    if self.post_ln:
      x = nn.LayerNorm()(x + attn(x, x))
      x = nn.LayerNorm()(x + mlp(x))
    else:
      h = nn.LayerNorm()(x)
      x = x + attn(h, h)
      x = x + mlp(nn.LayerNorm()(x))
    return x, None


class Stack(nn.Module):
  depth: int
  dim: int
  post_ln: bool
  classes: int = 4

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.dim)(x)
    blocks = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=self.depth)
    x, _ = blocks(self.dim, self.post_ln, name="blocks")(x, None)
    if not self.post_ln:
      x = nn.LayerNorm()(x)
    return nn.Dense(self.classes)(x.mean(axis=1))


def _make(depth, width, post_ln):
  x = jax.random.normal(jax.random.key(1), (16, 8, 12))
  y = jnp.arange(16) % 4
  model = Stack(depth, width, post_ln)
  return model, jax.jit(model.init)(jax.random.key(0), x), (x, y)


def make_pre(depth: int = 4, width: int = 32):
  """Pre-LN: x + f(LN(x)). Re-initialised per seed from the module."""
  return _make(depth, width, post_ln=False)


def make_post(depth: int = 4, width: int = 32):
  """Post-LN: LN(x + f(x))."""
  return _make(depth, width, post_ln=True)
