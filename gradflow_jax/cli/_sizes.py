"""The size guards: a run whose memory or time estimate does not fit is
refused before any work (ValueError, exit 2), unless ``--force``."""

from __future__ import annotations

import sys


def available_bytes() -> int | None:
  """Memory available to this process now (Linux MemAvailable), or None."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    return None
  return None


def _check_memory(need: int, force: bool, what: str, lower: str) -> None:
  """Refuses (ValueError) a computation estimated to need more memory than is
  available, before it starts, unless ``force``."""
  have = available_bytes()
  if have is not None and need > 0.8 * have and not force:
    raise ValueError(f"expected the {what} to fit in memory: it needs about "
                     f"{need / 2**30:.1f} GiB and {have / 2**30:.1f} GiB is available; lower "
                     f"{lower} (or pass --force)")


MAX_SECONDS = 3600.0  # a run estimated to take longer is refused without --force


def _duration(seconds: float) -> str:
  return (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200
          else f"{seconds / 3600:.1f} h" if seconds < 2e5 else f"{seconds / 86400:.2g} days")


def _check_time(seconds: float, force: bool, quiet: bool, what: str, lower: str) -> None:
  """Refuses (ValueError) a run estimated to take longer than MAX_SECONDS,
  before it starts, unless ``force``; says the estimate of one over a minute."""
  if seconds > MAX_SECONDS and not force:
    raise ValueError(f"expected the {what} to finish within {_duration(MAX_SECONDS)}: it is "
                     f"estimated to take about {_duration(seconds)} on this machine; lower "
                     f"{lower} (or pass --force)")
  if seconds > 60 and not quiet:
    print(f"{what}: estimated to take about {_duration(seconds)} (rough, within about 2x)",
          file=sys.stderr, flush=True)


def check_size(args, need_bytes: int, seconds: float, what: str, lower: str) -> None:
  force = getattr(args, "force", False)
  _check_memory(need_bytes, force, what, lower)
  _check_time(seconds, force, args.quiet, what, lower)


# what to lower when a command runs out of memory
SIZE_OPTIONS = {
    "compare": "--width, --depth or --batch-size", "report": "--width, --depth or --batch-size",
    "depth": "--max-depth, --width, --seeds, --batch-size or --depths/--examples with --model",
    "width": "--widths or --seeds", "rnn": "--hidden, --steps or --batch-size",
    "train": "--width, --depth or --batch-size (or the --model factory's sizes)",
    "diagnose": "the --model factory's batch or model size",
    "curvature": "--examples, --probes or --lanczos-steps (or the --model factory's size)"}


def out_of_memory(e: BaseException) -> bool:
  text = str(e)
  return isinstance(e, MemoryError) or (
      type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError")
      and ("RESOURCE_EXHAUSTED" in text or "Out of memory" in text))


def first_line(e: BaseException) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return (lines[0] if lines else type(e).__name__)[:200]
