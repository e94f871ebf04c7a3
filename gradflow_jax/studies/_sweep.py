"""Depth sweeps: activation x initializer x (sigma_w, sigma_b) x depth x seed.

One network of the largest depth per grid point gives the input-to-depth
Jacobians of every shallower depth (its prefixes) in one compiled scan. Seeds
and gain/bias values are vmapped; that flat axis is sharded over every visible
device (and every host under ``jax.distributed``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gradflow_jax import theory
from gradflow_jax.measure import _jacobians, _rows
from gradflow_jax.models import _initializers
from gradflow_jax.models._config import MLPConfig


# The time model of SweepSettings.estimated_seconds, fitted on 2 CPU cores
# (jax 0.10) over widths 8-256 and depths 500-100000: measured / estimated
# 0.85-0.97 there (benchmarks/bench_sweep_estimate.py).
_FIXED_SECONDS = 6.0   # per config: compiling and starting the two programs
_LAYER_SECONDS = 4e-5  # per layer and config: the loop's own overhead
_STEP_FACTOR = 8       # a layer of the sweep costs this many calibration steps
_CURVE_FACTOR = 50     # a per-layer Lanczos norm costs this many calibration steps


def calibration_step_seconds(width: int, lanes: int, dtype: str = "float32",
                             steps: int = 32) -> float:
  """Seconds per step of a scan doing what one layer of the sweep does most:
  ``lanes`` Jacobians (width x width) multiplied by a weight matrix and scaled
  by phi'. Best of three runs after compiling (about a second in all)."""
  dt = jnp.dtype(dtype)

  def run(j, w, d):
    body = lambda j, _: (d[:, :, None] * jnp.einsum("ij,njk->nik", w, j), None)
    return jax.lax.scan(body, j, None, length=steps)[0]
  fn = jax.jit(run)
  args = (jnp.full((lanes, width, width), 0.01, dt), jnp.eye(width, dtype=dt),
          jnp.ones((lanes, width), dt))
  fn(*args).block_until_ready()
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    fn(*args).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return best / steps


@dataclasses.dataclass(frozen=True)
class SweepSettings:
  """The grid. ``inits`` may hold ``"auto"``; ``sigma_ws`` are gains (``None``:
  the initializer's default for the activation)."""
  activations: tuple[str, ...] = ("tanh", "relu")
  inits: tuple[str, ...] = ("auto",)
  sigma_ws: tuple[float | None, ...] = (None,)
  sigma_bs: tuple[float, ...] = (0.0,)
  max_depth: int = 200
  width: int = 64
  batch: int = 4
  seeds: int = 4
  spectrum_depths: int = 16
  dtype: str = "float32"
  seed: int = 0

  def __post_init__(self):
    for label in ("max_depth", "width", "batch", "seeds", "spectrum_depths"):
      v = getattr(self, label)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"expected {label} >= 1, got {v!r}")
    for s in self.sigma_ws:
      if s is not None and not s > 0:
        raise ValueError(f"expected sigma_w values > 0, got {s}")
    for s in self.sigma_bs:
      if not s >= 0:
        raise ValueError(f"expected sigma_b values >= 0, got {s}")
    for init in self.inits:
      if init != "auto":
        _initializers.canonical_init(init)

  def estimated_bytes(self) -> int:
    """Peak memory of the largest group's program, about: per (seed, point)
    and layer, the weights and the Jacobian work x4 for the scan's buffers,
    plus each example's singular-value row (measured peak RSS / estimate:
    1.1 at depth 1e6, width 8; 1.02 at depth 1e5, width 64; 4 seeds)."""
    itemsize = 8 if self.dtype == "float64" else 4
    lanes = self.seeds * len(self.sigma_ws) * len(self.sigma_bs)
    per_layer = 4 * (self.width**2 + self.width) + self.batch * (self.width + 2)
    return lanes * self.max_depth * per_layer * itemsize

  def estimated_seconds(self, step_seconds: Callable[[int, int], float] | None = None,
                        devices: int | None = None) -> float:
    """Wall time of the whole sweep, roughly (within about 2x on the machines
    measured; ``benchmarks/bench_sweep_estimate.py`` prints the ratio): per
    config a fixed compile cost, then per layer a loop overhead plus
    ``_STEP_FACTOR`` steps of a calibration scan of this machine
    (``step_seconds(width, lanes)``, timed here when the sweep is large) on
    one device's share of the grid (``devices``: all visible by default)."""
    devices = len(jax.devices()) if devices is None else int(devices)
    configs = len(self.activations) * len(self.inits)
    points = len(self.sigma_ws) * len(self.sigma_bs)
    lanes = -(-points * self.seeds // devices) * self.batch  # per device, as run_group pads
    flops = configs * self.max_depth * lanes * 2 * self.width**3
    if flops < 2e10 and self.max_depth < 20000:  # seconds at most: not worth timing
      return configs * _FIXED_SECONDS
    step = step_seconds or functools.partial(calibration_step_seconds, dtype=self.dtype)
    sweep = self.max_depth * (_LAYER_SECONDS + _STEP_FACTOR * step(self.width, lanes))
    curves = min(self.max_depth, CURVE_LAYERS) * _CURVE_FACTOR * step(self.width,
                                                                      points * self.batch)
    return configs * (_FIXED_SECONDS + sweep + curves)

  def groups(self) -> list[tuple[MLPConfig, list[tuple[float, float]]]]:
    """(config, [(gain, sigma_b), ...]): one compiled program per config."""
    out = []
    for act in self.activations:
      for init in self.inits:
        cfg = MLPConfig(self.width, self.width, self.max_depth, 1, activation=act, init=init,
                        dtype=self.dtype)
        if init == "auto":
          cfg = cfg.replace(init=cfg.init_spec.name)
          default = MLPConfig(self.width, self.width, 1, 1, activation=act).init_spec.gain
        else:
          default = cfg.init_spec.gain
        points = [(default if s is None else float(s), float(b))
                  for s in self.sigma_ws for b in self.sigma_bs]
        out.append((cfg.replace(sigma_w=None), points))
    return out


def effective_sigma_w(cfg: MLPConfig, gain: float) -> float:
  """sqrt(fan_in x weight variance) of a width x width layer: the mean-field sigma_w."""
  return float(np.sqrt(cfg.width * _initializers.weight_variance(cfg.init, gain, cfg.width,
                                                                 cfg.width)))


def _init_scaled(cfg: MLPConfig, key, gain, sigma_b, count: int):
  """``count`` stacked width x width layers: weights gain x (a gain-1 draw),
  biases ~ N(0, sigma_b^2). Every initializer is linear in its gain, so gains
  can be traced and vmapped; one vmapped draw keeps the program small."""
  unit = _initializers.initializer(cfg.init, 1.0)
  kw, kb = jax.random.split(key)
  w = jax.vmap(lambda k: unit(k, (cfg.width, cfg.width), jnp.float32))(
      jax.random.split(kw, count))
  b = jax.random.normal(kb, (count, cfg.width), jnp.float32)
  return {"w": (gain * w).astype(cfg.jnp_dtype), "b": (sigma_b * b).astype(cfg.jnp_dtype)}


def _use_gram() -> bool:
  """On several host (CPU) devices, XLA's LAPACK SVD wedges when devices run it
  concurrently (seen with jax 0.10 and --xla_force_host_platform_device_count);
  eigvalsh of the Gram matrix does not, so the sweep uses it there."""
  return jax.default_backend() == "cpu" and len(jax.devices()) > 1


def _sample_fn(cfg: MLPConfig, batch: int, wanted: tuple[bool, ...], base_seed: int):
  gram = _use_gram()

  def sample(gain, sigma_b, seed):
    key = jax.random.fold_in(jax.random.key(base_seed), seed)
    kp, kx = jax.random.split(key)
    stacked = _init_scaled(cfg, kp, gain, sigma_b, cfg.depth)
    lp0 = jax.tree.map(lambda a: a[0], stacked)
    rest = jax.tree.map(lambda a: a[1:], stacked) if cfg.depth > 1 else None
    x = jax.random.normal(kx, (batch, cfg.in_dim), cfg.jnp_dtype)
    sv, fro = jax.vmap(lambda xi: _jacobians._exact_one(cfg, lp0, rest, xi, wanted, gram))(x)
    idx = np.nonzero(np.asarray(wanted))[0]
    return fro / sv.shape[-1], sv[:, idx, 0], sv[:, idx, -1]
  return sample


CURVE_LAYERS = 256  # per-layer norms measured at most at this many layers


def curve_layers(depth: int, most: int = CURVE_LAYERS) -> tuple[int, ...]:
  """The layers whose Jacobian norm the per-layer curves measure: every
  layer up to ``most``, else ``most`` evenly spaced ones, first and last
  included (a deeper net costs no more than that)."""
  return tuple(int(l) for l in np.unique(np.linspace(0, depth - 1, min(depth, most)).round()))


def layer_curves(settings: SweepSettings, method: str = "lanczos") -> list[dict]:
  """Per-layer Jacobian norms ||dh_l/dh_(l-1)|| for the first seed of every grid
  point (one compiled program per config, vmapped over its points), at the
  layers :func:`curve_layers` picks (``"layers"``)."""
  curves = []
  for cfg, points in settings.groups():
    layers = curve_layers(cfg.depth)

    def one(gain, sigma_b, cfg=cfg, layers=layers):
      key = jax.random.fold_in(jax.random.key(settings.seed), 0)
      kp, kx = jax.random.split(key)
      stacked = _init_scaled(cfg, kp, gain, sigma_b, cfg.depth)
      lp0 = jax.tree.map(lambda a: a[0], stacked)
      rest = jax.tree.map(lambda a: a[1:], stacked) if cfg.depth > 1 else None
      x = jax.random.normal(kx, (settings.batch, cfg.in_dim), cfg.jnp_dtype)
      return _jacobians.layer_norms_stacked(cfg, lp0, rest, x, method, 1e-5, 1000, layers)
    norms, conv = jax.jit(jax.vmap(one))(jnp.asarray([p[0] for p in points], jnp.float32),
                                         jnp.asarray([p[1] for p in points], jnp.float32))
    for i, (gain, sb) in enumerate(points):
      sw = effective_sigma_w(cfg, gain)
      curves.append({"label": f"{cfg.activation} · {cfg.init} · σw {sw:.3g} · σb {sb:.3g}",
                     "layers": np.asarray(layers), "norms": np.asarray(norms[i]),
                     "converged": np.asarray(conv[i]),
                     "chi1": _chi1_or_nan(cfg.activation, sw, sb)})
  return curves


def _chi1_or_nan(activation: str, sigma_w: float, sigma_b: float) -> float:
  """Mean-field chi_1 at the fixed point (the mean squared singular value of a
  layer Jacobian there), NaN where the theory has no value for it."""
  try:
    return float(theory.chi1(activation, sigma_w, sigma_b))
  except (ValueError, ArithmeticError):
    return float("nan")


def _grid_sharding():
  mesh = Mesh(np.asarray(jax.devices()), ("grid",))
  return NamedSharding(mesh, PartitionSpec("grid"))


def _to_global(arr: np.ndarray, sharding) -> jax.Array:
  return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])


def _to_host(arr: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(arr, tiled=True))
  return np.asarray(arr)


def run_group(cfg: MLPConfig, points: list[tuple[float, float]], settings: SweepSettings):
  """One config's points x seeds, sharded over all devices. Returns host arrays
  (points, seeds, batch, ...)."""
  depths = _jacobians.log_spaced_depths(cfg.depth, settings.spectrum_depths)
  wanted = tuple(d in depths for d in range(1, cfg.depth + 1))
  n_pts, n_seeds = len(points), settings.seeds
  gains = np.repeat([p[0] for p in points], n_seeds).astype(np.float32)
  sbs = np.repeat([p[1] for p in points], n_seeds).astype(np.float32)
  seeds = np.tile(np.arange(n_seeds, dtype=np.int32), n_pts)
  n = len(gains)
  n_dev = len(jax.devices())
  pad = (-n) % n_dev
  gains, sbs, seeds = (np.concatenate([a, a[:1].repeat(pad)]) for a in (gains, sbs, seeds))
  sharding = _grid_sharding()
  # shard_map: every device runs the vmapped sample function on its own slice
  # of the grid; nothing is communicated until the results are gathered.
  fn = jax.jit(jax.shard_map(jax.vmap(_sample_fn(cfg, settings.batch, wanted, settings.seed)),
                             mesh=sharding.mesh, in_specs=PartitionSpec("grid"),
                             out_specs=PartitionSpec("grid"), check_vma=False))
  msq, top, low = fn(*(_to_global(a, sharding) for a in (gains, sbs, seeds)))
  shape = lambda a: _to_host(a)[:n].reshape((n_pts, n_seeds) + a.shape[1:])
  return {"depths_all": np.arange(1, cfg.depth + 1), "spectrum_depths": np.asarray(depths),
          "mean_sq_singular_value": shape(msq), "spectral_norm": shape(top),
          "min_singular_value": shape(low)}


def _first_nonfinite(values: np.ndarray, depths: np.ndarray) -> int | None:
  bad = ~np.isfinite(values)
  first = int(_rows.first_flagged(bad.reshape(-1, bad.shape[-1]).any(0), depths))
  return None if first < 0 else first


def run_sweep(settings: SweepSettings, on_group: Callable[[str], None] | None = None) -> dict:
  """Runs the grid; returns ``{"settings", "devices", "points": [...]}`` with, per
  grid point, per-seed/example measurements and the mean-field prediction."""
  results = []
  for cfg, points in settings.groups():
    label = f"{cfg.activation} · {cfg.init}"
    if on_group is not None:
      on_group(label)
    out = run_group(cfg, points, settings)
    for i, (gain, sb) in enumerate(points):
      sw = effective_sigma_w(cfg, gain)
      try:
        predicted = theory.mean_sq_singular_value_by_depth(
            cfg.activation, sw, sb, cfg.depth, q0=sw**2 + sb**2)
      except (ValueError, FloatingPointError):
        predicted = np.full(cfg.depth, np.nan)
      msq, top = out["mean_sq_singular_value"][i], out["spectral_norm"][i]
      results.append({
          "label": f"{cfg.activation} · {cfg.init} · σw {sw:.3g} · σb {sb:.3g}",
          "activation": cfg.activation, "init": cfg.init, "gain": gain, "sigma_w": sw,
          "sigma_b": sb, "depths": out["depths_all"], "spectrum_depths": out["spectrum_depths"],
          "mean_sq_singular_value": msq, "spectral_norm": top,
          "min_singular_value": out["min_singular_value"][i],
          "theory_mean_sq_singular_value": predicted,
          "chi1": theory.chi1(cfg.activation, sw, sb) if np.isfinite(predicted).all() else None,
          "first_nonfinite_depth": _first_nonfinite(msq, out["depths_all"]),
      })
  return {"settings": dataclasses.asdict(settings), "devices": len(jax.devices()),
          "processes": jax.process_count(), "points": results}
