"""Run by test_watch_sharded.py in a subprocess with 4 host CPU devices: the
monitored step (with a flight recorder) on a (data=2, model=2) mesh against
one device, and the
collectives the statistics add to the compiled step. Prints one JSON line."""

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import gradflow_jax as gf


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for _ in range(3):
      x = jnp.tanh(nn.Dense(32)(x))
    return nn.Dense(8)(x)


def _rel(a, b, scale=0.0):
  """max |a - b| / (|b| + scale); equal non-finite entries count as equal."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  same = (a == b) | (np.isnan(a) & np.isnan(b))
  with np.errstate(invalid="ignore", divide="ignore"):
    d = np.where(same, 0.0, np.abs(a - b) / (np.abs(b) + scale + 1e-30))
  return float(np.max(d)) if d.size else 0.0


def main():
  assert len(jax.devices()) == 4, jax.devices()
  module = MLP()
  x = jax.random.normal(jax.random.key(1), (16, 32))
  y = jax.random.randint(jax.random.key(2), (16,), 0, 8)
  params = module.init(jax.random.key(0), x)["params"]
  tx = optax.adam(1e-3)

  def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(module.apply({"params": p}, x),
                                                           y).mean()
  watched = gf.value_and_grad(loss_fn, activations={f"Dense_{i}": "tanh" for i in range(3)},
                              histograms=True)

  recorder = gf.watch.FlightRecorder(window=8)
  rec = recorder.init(params, adam=True)
  spectra = gf.watch.WeightSpectra()
  spectra_state = spectra.init(params, jax.random.key(3))

  def monitored(params, opt_state, x, y):
    """With every tier: norms and optimizer in a flight recorder, spectra."""
    loss, grads, flow = watched(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    recorded = recorder.update(rec, 0, gf.watch.step_norms(loss, grads, params, updates),
                               gf.watch.adam_health(opt_state, grads))
    s = spectra.update(spectra_state, new)
    return (new, opt_state, flow, gf.watch.update_ratios(params, new), recorded,
            (s.sigma, gf.watch.stable_ranks(new, s.sigma)))

  def plain(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  single = jax.jit(monitored)(params, tx.init(params), x, y)

  mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
  # tensor-parallel kernels (output features over "model"), FSDP-style
  # biases (over "data"), the batch over "data"
  spec = lambda path, leaf: P(None, "model") if leaf.ndim == 2 else P("data")
  p_shard = jax.tree_util.tree_map_with_path(lambda pa, l: NamedSharding(mesh, spec(pa, l)),
                                             params)
  sharded_params = jax.device_put(params, p_shard)
  opt_state = jax.jit(tx.init, out_shardings=None)(sharded_params)
  xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
  ys = jax.device_put(y, NamedSharding(mesh, P("data")))
  step = jax.jit(monitored)
  out = step(sharded_params, opt_state, xs, ys)
  # error relative to the size of what was summed: a mean near 0 against its
  # std, a histogram's sum against sqrt(n * sum of squares) (Cauchy-Schwarz)
  a_single, a_sharded = single[2].activations, out[2].activations
  errors = {"activations.mean": _rel(a_sharded.mean, a_single.mean, a_single.std)}
  for field in ("std", "min", "max", "saturation_fraction", "dead_fraction", "zero_fraction"):
    errors[f"activations.{field}"] = _rel(getattr(a_sharded, field), getattr(a_single, field))
  errors["tap_grad_norm"] = _rel(out[2].tap_grad_norm, single[2].tap_grad_norm)
  errors["global_norm"] = _rel(out[2].global_norm, single[2].global_norm)
  errors["param_grad_norms"] = max(_rel(a, b) for a, b in zip(
      jax.tree.leaves(out[2].param_grad_norms), jax.tree.leaves(single[2].param_grad_norms)))
  errors["update_ratios"] = max(_rel(a, b) for a, b in zip(jax.tree.leaves(out[3]),
                                                           jax.tree.leaves(single[3])))
  errors["recorder"] = max(_rel(a, b) for a, b in zip(jax.tree.leaves(out[4].norms),
                                                      jax.tree.leaves(single[4].norms)))
  errors["optimizer"] = max(_rel(a, b) for a, b in zip(jax.tree.leaves(out[4].health),
                                                       jax.tree.leaves(single[4].health)))
  errors["spectra"] = max(_rel(a, b) for a, b in zip(out[5], single[5]))
  count_moves = 0
  for k, h in single[2].histograms.items():
    g = out[2].histograms[k]
    count_moves += int(np.abs(np.asarray(g.counts) - np.asarray(h.counts)).sum())
    n = float(np.sum(h.counts))
    scale = np.sqrt(n * float(h.sum_squares))
    errors["histograms.sum"] = max(errors.get("histograms.sum", 0.0), _rel(g.sum, h.sum, scale))
    for field in ("min", "max", "sum_squares"):
      errors[f"histograms.{field}"] = max(errors.get(f"histograms.{field}", 0.0),
                                          _rel(getattr(g, field), getattr(h, field)))

  def gathers(fn):
    hlo = jax.jit(fn).lower(sharded_params, opt_state, xs, ys).compile().as_text()
    return sorted(re.findall(r"= (\S+) all-gather\(", hlo))
  result = {
      "errors": errors,
      "histogram_count_moves": count_moves,
      "params_sharded": [str(v.sharding.spec) for v in jax.tree.leaves(out[0])],
      "plain_gathers": gathers(plain),
      "monitored_gathers": gathers(monitored),
      "flow_names": list(single[2].names),
  }
  print(json.dumps(result))


if __name__ == "__main__":
  sys.exit(main())
