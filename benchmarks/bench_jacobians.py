"""Jacobian benchmarks, each printed as a ratio measured in this run.

1. The exact all-depths sweep (depth 64, width 256, batch 8, tanh) against the
   bare linear algebra it cannot avoid: the same number of batched SVDs of
   matrices of the same size, timed alone. Target <= 1.3.
2. Power iteration against exact SVD for per-layer spectral norms at width
   1024. Target >= 10x faster at 1e-3 relative agreement.
3. Time against depth, L = 16, 32, 64, 128: time / L roughly constant.
4. The naive way: a separately compiled jax.jacfwd program per depth.

Run: python benchmarks/bench_jacobians.py [--quick]
"""

import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
import gradflow_jax as gf  # noqa: E402
from gradflow_jax.models import _mlp  # noqa: E402
from gradflow_jax.measure import _jacobians
from _timing import time_fn  # noqa: E402

QUICK = "--quick" in sys.argv


def _model(depth, width, act="tanh", batch=8, seed=0):
  cfg = gf.MLPConfig(in_dim=width, width=width, depth=depth, out_dim=1, activation=act)
  params = gf.init_mlp(jax.random.key(seed), cfg)
  x = jax.random.normal(jax.random.key(seed + 1), (batch, width))
  return cfg, params, x


def sweep_vs_bare_svd():
  depth, width, batch = (16, 128, 4) if QUICK else (64, 256, 8)
  cfg, params, x = _model(depth, width, batch=batch)
  depths = tuple(range(1, depth + 1))
  ours = time_fn(lambda: _jacobians._exact_all(cfg, params, x, depths), number=1, repeat=3)
  mats = jax.random.normal(jax.random.key(3), (depth, batch, width, width))
  svd = jax.jit(lambda m: jax.vmap(lambda b: jnp.linalg.svd(b, compute_uv=False))(m))
  bare = time_fn(svd, mats, number=1, repeat=3)
  print(f"1. all-depths exact sweep (L={depth}, width {width}, batch {batch}): {ours:.3f} s; "
        f"{depth * batch} bare SVDs alone: {bare:.3f} s; ratio {ours / bare:.2f} (target <= 1.3)")


def power_vs_exact():
  width, depth, batch = (256, 3, 2) if QUICK else (1024, 4, 2)
  cfg, params, x = _model(depth, width, batch=batch)
  f_exact = lambda: gf.layer_jacobian_norms(cfg, params, x, method="exact")
  f_power = lambda: gf.layer_jacobian_norms(cfg, params, x, method="power")
  f_lanczos = lambda: gf.layer_jacobian_norms(cfg, params, x, method="lanczos")
  t_exact = time_fn(f_exact, number=1, repeat=3)
  t_power = time_fn(f_power, number=1, repeat=3)
  t_lanczos = time_fn(f_lanczos, number=1, repeat=3)
  exact = f_exact()
  for name, t, f in (("power", t_power, f_power), ("lanczos", t_lanczos, f_lanczos)):
    rel = float(jnp.max(jnp.abs(f() / exact - 1)))
    print(f"2. per-layer spectral norms at width {width}: exact {t_exact:.3f} s, {name} "
          f"{t:.3f} s, speed-up {t_exact / t:.1f}x (target >= 10), max relative "
          f"difference {rel:.1e} (target <= 1e-3)")


def time_against_depth():
  width, batch = (64, 4) if QUICK else (128, 8)
  rows = []
  for depth in (16, 32, 64, 128):
    cfg, params, x = _model(depth, width, batch=batch)
    depths = tuple(range(1, depth + 1))
    t = time_fn(lambda: _jacobians._exact_all(cfg, params, x, depths), number=1, repeat=3)
    rows.append((depth, t))
  base = rows[0][1] / rows[0][0]
  print(f"3. time against depth (width {width}, batch {batch}, spectra at every depth):")
  for depth, t in rows:
    print(f"   L={depth:4d}  {t:.3f} s   time/L {t / depth * 1e3:.2f} ms   "
          f"(time/L) / (time/L at L=16) {t / depth / base:.2f}")


def naive_per_depth():
  depth, width, batch = (8, 64, 4) if QUICK else (16, 128, 8)
  cfg, params, x = _model(depth, width, batch=batch)
  t0 = time.perf_counter()
  for l in range(1, depth + 1):
    def h_l(xi, l=l):
      return _mlp.mlp_apply(cfg, params, xi[None])[1].hidden[l - 1][0]
    f = jax.jit(jax.vmap(lambda xi: jnp.linalg.svd(jax.jacfwd(h_l)(xi), compute_uv=False)))
    jax.block_until_ready(f(x))
  naive = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(gf.jacobian_spectra(cfg.replace(init="xavier_uniform"), params, x))
  ours = time.perf_counter() - t0
  print(f"4. naive: {depth} separately compiled jacfwd programs (compile + run) {naive:.2f} s; "
        f"one scan (compile + run) {ours:.2f} s; naive / ours {naive / ours:.1f}x")


if __name__ == "__main__":
  print(f"backend {jax.default_backend()}, {jax.device_count()} device(s)")
  if "--only-power" in sys.argv:
    power_vs_exact()
    sys.exit()
  sweep_vs_bare_svd()
  power_vs_exact()
  time_against_depth()
  naive_per_depth()
