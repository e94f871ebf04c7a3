"""Run by test_capture.py in a subprocess with 4 host CPU devices: taps inside
``jax.shard_map`` (batch split over "data", features over "model") against
the same model with explicit perturbations. Prints "ok"."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import gradflow_jax as gf
from gradflow_jax import capture
from gradflow_jax.capture import _probed as _probe

mesh = jax.make_mesh((2, 2), ("data", "model"),
                     axis_types=(jax.sharding.AxisType.Auto,) * 2)
w = jax.random.normal(jax.random.key(0), (2, 4, 4)) / 2.0
x = jax.random.normal(jax.random.key(1), (6, 4))


def block(w, x):
  h = jnp.tanh(gf.tap("h", x @ w[0]))  # varies over "data" only
  s = gf.tap("s", jnp.sum(h, axis=0, keepdims=True))  # a local sum: varies over "data"
  return jnp.tanh(h @ w[1]) + s


def model(w, x):
  out = jax.shard_map(block, mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"))(w, x)
  return jnp.sum(out ** 2)


def reference(w, x, p):
  taps = {"h": x @ w[0] + p["h"]}
  h = jnp.tanh(taps["h"])
  blocks = h.reshape(2, 3, 4)
  taps["s"] = jnp.sum(blocks, axis=1) + p["s"]
  out = jnp.tanh(h @ w[1]).reshape(2, 3, 4) + taps["s"][:, None]
  return jnp.sum(out ** 2), taps


if True:
  tapped = capture.trace(model, (w, x))
  assert {k: a.shape for k, a in tapped.avals.items()} == {"h": (6, 4), "s": (2, 4)}
  zeros = _probe.zero_perturbations(tapped.avals)
  loss = lambda w, p, how="add": capture.run(tapped, (w, x), p, how)
  (value, taps), (gw, gp) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      w, zeros)
  squares = jax.jit(jax.grad(lambda p: loss(w, p, "norms")[0]))(_probe.norm_slots(tapped.avals))
(rv, rtaps), (rgw, rgp) = jax.value_and_grad(reference, argnums=(0, 2), has_aux=True)(
    w, x, {"h": jnp.zeros((6, 4)), "s": jnp.zeros((2, 4))})
check = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5,
                                                atol=2e-6)
check(value, rv)
check(gw, rgw)
for k in ("h", "s"):
  check(taps[k], rtaps[k])
  check(gp[k], rgp[k])
got = _probe.slot_values(squares, ["h", "s"])
check(got, [np.sum(np.asarray(rgp[k], np.float64) ** 2) for k in ("h", "s")])
print("ok")
