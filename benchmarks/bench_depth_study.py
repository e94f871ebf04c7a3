"""Depth study of a linen pre-LN transformer (examples/transformer_ln.py:
make_pre), width 128, depths 2..32, 4 seeds, on whatever devices JAX sees.

Prints, from one run: the wall time of the whole study (target: under 2
minutes on 2 CPU cores), the time of each depth (factory calls, tracing,
compiling and running, all included), the time per unit depth at depth 32
against depth 8 (target: within 1.3x, cost linear in depth), and the largest
relative gap between the matrix-free (Lanczos) spectral norms and exact SVD
(target: under 1e-3).

  python benchmarks/bench_depth_study.py [--depths 2,4,8,16,32] [--seeds 4] [--width 128]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

import jax  # noqa: E402

import gradflow_jax as gf  # noqa: E402
import transformer_ln  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--depths", default="2,4,8,16,32")
  p.add_argument("--seeds", type=int, default=4)
  p.add_argument("--width", type=int, default=128)
  a = p.parse_args()
  depths = tuple(int(d) for d in a.depths.split(","))
  settings = gf.studies.DepthStudySettings(depths=depths, seeds=a.seeds, width=a.width)
  marks = [time.perf_counter()]
  per_depth = {}

  def on_depth(d):
    marks.append(time.perf_counter())
    per_depth[d] = marks[-1] - marks[-2]
    print(f"depth {d:3d}: {per_depth[d]:6.1f} s", flush=True)
  result = gf.depth_study(transformer_ln.make_pre, settings, on_depth=on_depth)
  total = marks[-1] - marks[0]
  print(f"devices: {len(jax.devices())} {jax.default_backend()}; seeds {a.seeds}, width {a.width}")
  print(f"whole study: {total:.1f} s (target < 120 s on 2 CPU cores)")
  if 8 in per_depth and 32 in per_depth:
    ratio = (per_depth[32] / 32) / (per_depth[8] / 8)
    print(f"time per unit depth, depth 32 / depth 8: {ratio:.2f} (target <= 1.3)")
  gaps = [d["lanczos_vs_exact_max_rel_diff"] for d in result["depths"]
          if d["lanczos_vs_exact_max_rel_diff"] is not None]
  if gaps:
    print(f"Lanczos vs exact SVD, largest relative gap: {max(gaps):.1e} (target < 1e-3)")
  print("unconverged Lanczos values:", sum(d["summary"]["unconverged"] for d in result["depths"]))


if __name__ == "__main__":
  main()
