"""A Flax NNX model on integer tokens: Embed, a GELU MLP, mean pooling.
The input is never cast: the analysis taps from the embedding on.

  python scripts/analyze.py diagnose --model examples/nnx_embed.py:make
  python scripts/analyze.py train --model examples/nnx_embed.py:make_task

``make_task`` also hands over its own loss (label-smoothed cross-entropy) and
its own data (which quarter of the vocabulary is most frequent in a
sequence), the fourth item a factory may return.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def _sequences(n: int, seed: int):
  """Tokens whose label is the vocabulary quarter (token // 25) drawn most."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, n)
  common = rng.integers(0, 25, (n, 12)) + 25 * labels[:, None]
  tokens = np.where(rng.random((n, 12)) < 0.5, common, rng.integers(0, 100, (n, 12)))
  return tokens.astype(np.int32), labels.astype(np.int32)


def smoothed_cross_entropy(logits, labels):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), 0.1)
  return optax.softmax_cross_entropy(logits, targets).mean()


def make_task():
  x_train, y_train = _sequences(512, 0)
  x_test, y_test = _sequences(128, 1)
  model, _, _ = make()
  return model, None, (x_train[:32], y_train[:32]), {
      "loss": smoothed_cross_entropy, "data": (x_train, y_train, x_test, y_test)}
