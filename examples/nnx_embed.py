"""A Flax NNX model on integer tokens: Embed, a GELU MLP, mean pooling.
The input is never cast: the analysis taps from the embedding on.

  python scripts/analyze.py diagnose --model examples/nnx_embed.py:make
"""

import jax
import jax.numpy as jnp
from flax import nnx


class TokenMLP(nnx.Module):
  def __init__(self, vocab: int, dim: int, classes: int, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, dim, rngs=rngs)
    self.hidden = nnx.Linear(dim, 2 * dim, rngs=rngs)
    self.out = nnx.Linear(2 * dim, classes, rngs=rngs)

  def __call__(self, tokens):
    h = self.embed(tokens)                  # (batch, seq, dim)
    h = nnx.gelu(self.hidden(h))
    return self.out(h.mean(axis=1))


def make():
  tokens = jax.random.randint(jax.random.key(1), (32, 12), 0, 100)
  labels = (tokens[:, 0] % 4).astype(jnp.int32)
  return TokenMLP(100, 32, 4, nnx.Rngs(0)), None, (tokens, labels)
