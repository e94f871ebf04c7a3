"""The depth sweep's time estimate against its measured wall time.

  python benchmarks/bench_sweep_estimate.py

For a few sweeps (width x depth), prints the estimate
(``SweepSettings.estimated_seconds``, which times a calibration scan on this
machine), the measured time of ``run_sweep`` + ``layer_curves`` (compilation
included, as a user waits for it) and their ratio. The CLI refuses a sweep
estimated above an hour without --force, so the ratio should stay near 1
(0.5-2 is what "rough, within about 2x" promises).
"""

import time

from gradflow_jax.studies import _sweep

CASES = [(100_000, 8), (20_000, 32), (5_000, 64), (1_000, 128), (500, 256)]


def main() -> None:
  print(f"{'depth':>7} {'width':>5} {'estimated s':>11} {'measured s':>10} {'ratio':>6}")
  for depth, width in CASES:
    settings = _sweep.SweepSettings(max_depth=depth, width=width)
    estimate = settings.estimated_seconds()
    start = time.perf_counter()
    _sweep.run_sweep(settings)
    _sweep.layer_curves(settings)
    measured = time.perf_counter() - start
    print(f"{depth:>7} {width:>5} {estimate:>11.1f} {measured:>10.1f} {measured / estimate:>6.2f}",
          flush=True)


if __name__ == "__main__":
  main()
