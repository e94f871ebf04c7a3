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
