"""Timing helper shared by the benchmarks: median of repeated blocks."""

import time

import jax


def time_fn(fn, *args, number=50, repeat=7):
  """Median seconds per call of ``fn(*args)`` (compiled first, results blocked)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeat):
    t0 = time.perf_counter()
    for _ in range(number):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / number)
  times.sort()
  return times[len(times) // 2]


def interleaved(fns: dict, *args, number=50, repeat=9):
  """Median seconds per call for each of ``fns``, measured alternately in one
  run so that machine noise hits all of them alike."""
  for fn in fns.values():
    jax.block_until_ready(fn(*args))
  samples = {k: [] for k in fns}
  for _ in range(repeat):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      for _ in range(number):
        out = fn(*args)
      jax.block_until_ready(out)
      samples[k].append((time.perf_counter() - t0) / number)
  return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


def paired_ratio(fn, base, *args, number=20, repeat=41):
  """Median over ``repeat`` rounds of time(fn) / time(base), each round timing
  both back to back (``number`` calls each, order alternating), so that slow
  drifts of a shared machine cancel in each ratio. Returns (ratio, seconds per
  call of fn, of base) with the seconds as medians."""
  for f in (fn, base):
    jax.block_until_ready(f(*args))
  ratios, t_fn, t_base = [], [], []
  for r in range(repeat):
    pair = {}
    for name, f in (("fn", fn), ("base", base)) if r % 2 else (("base", base), ("fn", fn)):
      t0 = time.perf_counter()
      for _ in range(number):
        out = f(*args)
      jax.block_until_ready(out)
      pair[name] = (time.perf_counter() - t0) / number
    ratios.append(pair["fn"] / pair["base"])
    t_fn.append(pair["fn"])
    t_base.append(pair["base"])
  med = lambda v: sorted(v)[len(v) // 2]
  return med(ratios), med(t_fn), med(t_base)
