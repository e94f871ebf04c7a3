"""Model families: a factory ``make(depth=, width=, key=) -> (model, params, (x, y))``
built at one size for several seeds, its parameters stacked on a leading seed
axis so that one compiled program (vmapped over seeds) measures them all."""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax.capture import _probed as _probe
from gradflow_jax.measure import _model_stats
from gradflow_jax.models import _flax, _loading


class Family(NamedTuple):
  """One size of a family, every seed.

  Attributes:
    model: seed 0's probed model (its ``forward`` serves every seed).
    params: the seeds' parameters, stacked on a leading axis.
    x, y: the factory's batch (seed 0's), cut to the examples studied.
    info: seed 0's taps, in recording order.
    shapes: their shapes.
  """
  model: _probe.ProbedModel
  params: Any
  x: Any
  y: Any
  info: tuple
  shapes: dict

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(i.name for i in self.info)


def _accepted(make) -> tuple[set[str], bool]:
  """(keyword names the factory takes, whether it takes **kwargs)."""
  try:
    sig = inspect.signature(make)
  except (TypeError, ValueError):
    return set(), True
  names = {n for n, p in sig.parameters.items()
           if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
  return names, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def check_factory(make, sizes: tuple[str, ...]) -> str | None:
  """Raises ValueError unless ``make`` takes the keywords ``sizes`` (``depth``,
  ``width``); returns how it draws seeds: ``"key"``, ``"seed"`` or None."""
  names, var_kw = _accepted(make)
  missing = [s for s in sizes if s not in names and not var_kw]
  if missing:
    shown = f"{getattr(make, '__name__', 'factory')}({', '.join(sorted(names))})"
    raise ValueError(f"expected the factory to take the keyword argument"
                     f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}=, got {shown}")
  if "key" in names:
    return "key"
  if "seed" in names:
    return "seed"
  return "key" if var_kw else None


def _stack(trees: list, label: str):
  first = jax.tree.structure(trees[0])
  shapes0 = [np.shape(a) for a in jax.tree.leaves(trees[0])]
  for t in trees[1:]:
    if jax.tree.structure(t) != first or [np.shape(a) for a in jax.tree.leaves(t)] != shapes0:
      raise ValueError(f"expected the factory to build the same parameter structure for every "
                       f"seed, got different ones at {label}")
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _examples(x, n: int | None):
  if n is None:
    return x
  return jax.tree.map(lambda a: a[:n], x)


def build(make, seeds: int, examples: int | None = None, base_seed: int = 0, output=None,
          **size) -> Family:
  """Calls ``make(**size, key=...)`` once per seed (or, for a linen factory
  that takes no key, re-initialises its module per seed) and stacks the
  parameters. Raises ValueError with one line for a factory that cannot."""
  how = check_factory(make, tuple(size))
  label = ", ".join(f"{k}={v}" for k, v in size.items())
  keys = [jax.random.fold_in(jax.random.key(base_seed), s) for s in range(seeds)]
  if how is None:
    model, params, (x, y), _ = _loading.call_factory(make, **size)
    made = [(model, params)]
    if seeds > 1:
      from flax import linen as nn
      if not isinstance(model, nn.Module):
        raise ValueError("expected the factory to take key= (a jax.random key) or seed= to "
                         f"draw {seeds} different networks, got neither")
      # one compiled init, run per seed (a vmapped init compiled 1.7x slower)
      init = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x))
      made = [(model, init(k)) for k in keys]
  else:
    made, x, y = [], None, None
    for s, k in enumerate(keys):
      model, params, batch, _ = _loading.call_factory(
          make, **size, **{how: k if how == "key" else s})
      if s == 0:
        x, y = batch
      made.append((model, params))
  probed = [_flax.as_probed(m, p, output=output) for m, p in made]
  x, y = _examples(x, examples), _examples(y, examples)
  info, shapes = _model_stats.discover(probed[0], x)
  return Family(probed[0], _stack([p.params for p in probed], label), x, y, info, shapes)


PROBE_SIZES = {"depth": (2, 4), "width": (16, 32)}  # small sizes every factory should take


def size_probe(make, key: str, examples: int | None = None, output=None,
               **fixed) -> tuple[tuple[int, int, float, int, int], ...]:
  """(size, parameters, tapped values per example, taps, examples) of seed 0 at the two
  sizes ``PROBE_SIZES[key]`` of the size ``key`` (``"depth"``/``"width"``):
  what :func:`estimated_cost` scales to the sizes asked for."""
  how = check_factory(make, (key,) + tuple(fixed))
  seed = {} if how is None else {how: jax.random.key(0) if how == "key" else 0}
  out = []
  for v in PROBE_SIZES[key]:
    model, params, (x, _), _ = _loading.call_factory(make, **{key: v}, **fixed, **seed)
    x = _examples(x, examples)
    probed = _flax.as_probed(model, params, output=output)
    _, shapes = _model_stats.discover(probed, x)
    n = max(len(jax.tree.leaves(x)[0]), 1)
    out.append((v, sum(int(np.size(a)) for a in jax.tree.leaves(probed.params)),
                sum(int(np.prod(s.shape)) for s in shapes.values()) / n, len(shapes), n))
  return tuple(out)


def _power_law(v1, y1, v2, y2, size):
  """y at ``size`` on the power law through (v1, y1) and (v2, y2), exponent in [0, 3]."""
  slope = np.log(max(y2, 1) / max(y1, 1)) / np.log(v2 / v1)
  return y1 * (size / v1) ** float(np.clip(slope, 0, 3))


# The cost model of a family study, fitted on 2 CPU cores (jax 0.10) to depth
# studies of examples/residual_mlp.py (depths 2-32), transformer_ln.py, resnet_cnn.py and
# width studies of mlp_width.py (widths 64-1024): a fixed cost per size,
# compiling per tap, and per seed and example the arithmetic of every pass
# (estimated / measured 0.5-1.7 there: the transformer's attention and the
# CNN's convolutions cost more than a flop per parameter)
# (a Lanczos local Jacobian per tap makes a depth study about 400 passes of
# 1 flop per parameter or tapped value; a width study's few steps about 30).
STUDY_FIXED_SECONDS = 5.0
STUDY_COMPILE_SECONDS_PER_TAP = 0.05
STUDY_FLOPS_PER_SECOND = 2e10


def estimated_cost(probe, sizes, seeds: int, passes: int, held: int) -> tuple[int, float]:
  """(peak bytes at the largest size, seconds for all sizes), roughly: each
  size's parameters, tapped values and taps extrapolated from ``probe``
  (:func:`size_probe`); memory holds per seed the parameters with their
  gradients and optimizer state (8x) and per example ``held`` copies of the
  tapped values (a Lanczos basis, a step's activations and gradients)."""
  (v1, p1, a1, t1, examples), (v2, p2, a2, t2, _) = probe
  seconds, peak = 0.0, 0
  for size in sizes:
    params = _power_law(v1, p1, v2, p2, size)
    values = _power_law(v1, a1, v2, a2, size)
    taps = _power_law(v1, t1, v2, t2, size)
    work = seeds * examples * (params + values) * passes
    seconds += (STUDY_FIXED_SECONDS + STUDY_COMPILE_SECONDS_PER_TAP * taps
                + work / STUDY_FLOPS_PER_SECOND)
    peak = max(peak, int(4 * seeds * (8 * params + examples * values * held)))
  return peak, seconds


def is_float_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.inexact)


def seed_sharding():
  """A 1-D mesh over every device (all hosts): the seed axis is split over it."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  return NamedSharding(Mesh(np.asarray(jax.devices()), ("grid",)), PartitionSpec("grid"))


def padded_seeds(seeds: int) -> int:
  """Seeds rounded up to a multiple of the device count (the padding repeats seed 0)."""
  n = len(jax.devices())
  return seeds + (-seeds) % n


def pad_params(params, seeds: int):
  total = padded_seeds(seeds)
  if total == seeds:
    return params
  return jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[:1], total - seeds, 0)]),
                      params)


def run_sharded(fn, params, *replicated, fast_compile: bool = False):
  """``jax.vmap(fn)`` over the (padded) seed axis of ``params``, that axis split
  over every device with ``shard_map``; ``replicated`` go to every device.
  ``fast_compile``: XLA's backend at optimisation level 0 (on a depth-8
  transformer: compile 5.8 s instead of 12.9 s, run 2.9 s instead of 1.4 s),
  for programs that run once. Returns host arrays."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  from gradflow_jax.studies import _sweep
  sharding = seed_sharding()
  everywhere = NamedSharding(sharding.mesh, P())
  params = jax.tree.map(lambda a: _sweep._to_global(np.asarray(a), sharding), params)
  replicated = jax.tree.map(lambda a: _sweep._to_global(np.asarray(a), everywhere), replicated)
  body = jax.shard_map(jax.vmap(fn, in_axes=(0,) + (None,) * len(replicated)),
                       mesh=sharding.mesh,
                       in_specs=(P("grid"),) + (P(),) * len(replicated),
                       out_specs=P("grid"), check_vma=False)
  options = {"xla_backend_optimization_level": 0} if fast_compile else {}
  out = jax.jit(body).lower(params, *replicated).compile(compiler_options=options)(
      params, *replicated)
  return jax.tree.map(_sweep._to_host, out)
