"""A plain-JAX ResNet-style MLP ``f(params, x)`` with taps marked by hand:
each block's pre-activation (role ``pre``, with its activation) and the
residual stream after it.

  python scripts/analyze.py diagnose --model examples/plain_resnet.py:make
"""

import jax
import jax.numpy as jnp

import gradflow_jax as gf


def init(key, in_dim=64, width=64, depth=8, classes=10):
  keys = jax.random.split(key, 2 * depth + 2)
  he = lambda k, i, o: jax.random.normal(k, (i, o)) * jnp.sqrt(2.0 / i)
  blocks = [{"w": he(keys[2 * i], width, width), "v": he(keys[2 * i + 1], width, width) * 0.1,
             "b": jnp.zeros(width)} for i in range(depth)]
  return {"stem": he(keys[-2], in_dim, width), "blocks": blocks,
          "head": he(keys[-1], width, classes) / jnp.sqrt(2.0)}


def resnet(params, x):
  h = x @ params["stem"]
  for i, p in enumerate(params["blocks"]):
    z = gf.tap(f"block{i}/pre", h @ p["w"] + p["b"][None], role="pre", activation="relu")
    h = gf.tap(f"block{i}/out", h + jax.nn.relu(z) @ p["v"])
  return h @ params["head"]


def make():
  data = gf.load_digits()
  x, y = jnp.asarray(data.x_train[:64]), jnp.asarray(data.y_train[:64])
  return resnet, init(jax.random.key(0)), (x, y)
