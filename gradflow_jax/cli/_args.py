"""argparse types of the CLI's options: each returns the parsed value or raises
``ArgumentTypeError`` with an "expected ..., got ..." line (exit status 2)."""

from __future__ import annotations

import argparse

def _csv(text: str) -> tuple[str, ...]:
  items = tuple(s.strip() for s in text.split(","))
  if not any(items):
    raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
  if not all(items):
    raise argparse.ArgumentTypeError(f"expected a comma-separated list without empty items, "
                                     f"got {text!r}")
  return items


def _number(text: str, cast, accept, what: str):
  """argparse type: ``cast(text)`` if ``accept`` holds, else an error naming ``what``."""
  try:
    v = cast(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
  if not accept(v):
    raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
  return v


def _positive_int(text: str) -> int:
  return _number(text, int, lambda v: v > 0, "a positive integer")


def _nonneg_float(text: str) -> float:
  return _number(text, float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")


def _seed(text: str) -> int:
  return _number(text, int, lambda v: 0 <= v < 2**32, "a seed in [0, 2**32)")


def _floats(text: str, positive: bool = False) -> tuple[float, ...]:
  """Comma-separated finite numbers >= 0 (> 0 with ``positive``)."""
  what = "positive" if positive else "non-negative"
  try:
    values = tuple(float(v) for v in _csv(text))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
  if not all(0 <= v < float("inf") and (v > 0 or not positive) for v in values):
    raise argparse.ArgumentTypeError(f"expected comma-separated finite {what} numbers, got "
                                     f"{text!r}")
  return values


def _positive_floats(text: str) -> tuple[float, ...]:
  return _floats(text, positive=True)


def _gains(text: str) -> tuple[float | None, ...]:
  if text.strip().lower() in ("default", "auto", "none"):
    return (None,)
  return _positive_floats(text)


def _positive_ints(text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(v) for v in _csv(text))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
  if not all(v > 0 for v in values):
    raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
  if len(set(values)) != len(values):
    raise argparse.ArgumentTypeError(f"expected distinct values, got {text!r}")
  return values


def _positive_float(text: str) -> float:
  return _number(text, float, lambda v: 0 < v < float("inf"), "a finite number > 0")


WATCH_TIERS = ("norms", "flow", "spectra", "optimizer", "curvature", "blocks", "noise")


def _watch(text: str) -> tuple[str, ...]:
  """``--watch norms,flow,spectra,optimizer``: the tiers a --model run logs."""
  tiers = _csv(text)
  bad = [t for t in tiers if t not in WATCH_TIERS]
  if bad:
    raise argparse.ArgumentTypeError(f"expected tiers from {','.join(WATCH_TIERS)}, got "
                                     f"{','.join(bad)}")
  return tuple(dict.fromkeys(tiers))


def _every(text: str) -> tuple[int | None, tuple]:
  """``--every N`` (the flow tier, and spectra's default), ``TIER=N`` pairs,
  or both (``10,norms=5``): (N or None, ((tier, n), ...))."""
  default, pairs = None, []
  for item in _csv(text):
    tier, _, n = item.rpartition("=")
    value = _number(n.strip(), int, lambda v: v > 0, "--every N or TIER=N with N a positive "
                    f"integer and TIER in {','.join(WATCH_TIERS)}")
    if not tier:
      default = value
    elif tier.strip() in WATCH_TIERS:
      pairs.append((tier.strip(), value))
    else:
      raise argparse.ArgumentTypeError(f"expected --every TIER=N with TIER in "
                                       f"{','.join(WATCH_TIERS)}, got {item!r}")
  return default, tuple(pairs)
