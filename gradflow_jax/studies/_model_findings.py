"""What a --model run's logged steps say (host code): findings that hold on
every step of a window, update ratios far from the rule of thumb, where a
NaN/Inf stopped the run; and the histogram series the plots draw."""

from __future__ import annotations

import numpy as np

from gradflow_jax.diagnosis import _diagnose
from gradflow_jax.studies._model_train import ModelTrainResult

# 100x the ~1e-3 rule of thumb either way, held over the whole window
UPDATE_RATIO_LOW = 1e-5
UPDATE_RATIO_HIGH = 1e-1


def histogram_series(result: ModelTrainResult, kind: str) -> dict[str, np.ndarray]:
  """Per tap, the (logged steps, bins) histogram counts of its values
  (``kind="act"``) or of dL/d tap (``"grad"``), bins ``HISTOGRAM_EDGES``."""
  return {name: np.stack([np.asarray(f.histograms[f"{kind}/{name}"].counts) for f in result.flows])
          for name in result.names} if result.flows else {}


def window_findings(result: ModelTrainResult, window: int) -> list[_diagnose.Finding]:
  """Findings that hold on every one of the last ``window`` logged steps (a
  tap whose gradient stays vanishing, units dead the whole time), update
  ratios far from ~1e-3 on every step of the window, and where a NaN/Inf
  stopped the run. Host-only."""
  found = []
  if result.stopped_at is not None:
    where = f" (first at tap {result.first_nonfinite_tap})" if result.first_nonfinite_tap else ""
    done = ("the run stopped with the last finite parameters" if result.on_nonfinite == "stop" else
            f"{result.skipped} of {len(result.losses)} steps skipped (not applied)")
    found.append(_diagnose.Finding(
        "error", "nonfinite_training", (),
        f"loss or gradients NaN/Inf at step {result.stopped_at}{where}; {done}",
        {"step": result.stopped_at, "first_tap": result.first_nonfinite_tap,
         "skipped": result.skipped},
        "lower the learning rate or clip gradients (--clip); check the data for NaN/Inf"))
  flows = [f for f in result.flows[-window:] if bool(f.measured)]
  if not flows:
    return found
  per_step = [_diagnose.diagnose_model(f.flow_stats) for f in flows]
  key = lambda f: (f.kind, f.layers)
  common = set(map(key, per_step[0])).intersection(*[set(map(key, s)) for s in per_step[1:]])
  steps = result.steps[-len(flows):]
  for f in per_step[-1]:
    if key(f) in common:
      found.append(f._replace(
          message=f"{f.message}, on each of the last {len(flows)} logged steps "
                  f"({steps[0]}-{steps[-1]})",
          evidence={**f.evidence, "window_steps": [steps[0], steps[-1]]}))
  found += _update_ratio_findings(result.metrics[-len(flows):], steps)
  return sorted(found, key=lambda f: _diagnose.SEVERITIES.index(f.severity))


def _update_ratio_findings(metrics: list[dict], steps: list[int]) -> list[_diagnose.Finding]:
  names = [k for k in metrics[-1] if k.startswith("update_ratio/")]
  low, high = [], []
  for k in names:
    v = np.asarray([m.get(k, np.nan) for m in metrics], float)
    if np.all(np.isfinite(v)) and np.all(v < UPDATE_RATIO_LOW):
      low.append(k.split("/", 1)[1])
    if np.all(np.isfinite(v)) and np.all(v > UPDATE_RATIO_HIGH):
      high.append(k.split("/", 1)[1])
  out = []
  span = f"steps {steps[0]}-{steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"
  if high:
    out.append(_diagnose.Finding(
        "warning", "update_ratio_high", (),
        f"update/weight ratio above {UPDATE_RATIO_HIGH:g} on every logged step ({span}) for "
        f"{_shown(high)} (rule of thumb ~1e-3)", {"leaves": high},
        "lower the learning rate (or clip), these weights change by over a tenth a step"))
  if low:
    out.append(_diagnose.Finding(
        "info", "update_ratio_low", (),
        f"update/weight ratio below {UPDATE_RATIO_LOW:g} on every logged step ({span}) for "
        f"{_shown(low)} (rule of thumb ~1e-3)", {"leaves": low},
        "these parameters barely move: raise the learning rate, or check for vanishing "
        "gradients upstream"))
  return out


def _shown(names: list[str]) -> str:
  return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
