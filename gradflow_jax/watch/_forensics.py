"""What moved first: the flight recorder's window read on the host. For every
parameter leaf, its onset is the first step where it left its own band (its
update or gradient norm, on a log scale, beyond ``sigmas`` standard
deviations of the steps before; or a non-finite entry); leaves are ranked by
onset, and a verdict names the culprit: the leaves whose parameters went
non-finite first; the data, when the gradients of most layers left their
band at the same step; else the leaves that moved first."""

from __future__ import annotations

import math

import jax
import numpy as np

from gradflow_jax.watch._recorder import REASONS, RecorderState
from gradflow_jax.watch._writers import leaf_names

HISTORY = 4        # steps a band needs before it can be left
BAND_FLOOR = 0.1   # the band is at least this wide in log10 (x1.26) either side
DATA_SHARE = 0.6   # gradients of this share of layers leaving at one step: the data did it
HEALTH = ("m_hat_norm", "v_hat_norm", "cos_m_g", "eps_dominated")  # the optimizer tier
# what left the band, strongest evidence first (ranks ties within a step)
KINDS = ("non-finite parameters", "non-finite gradient", "update norm", "gradient norm")


def window(state: RecorderState) -> tuple[np.ndarray, dict]:
  """(steps in order, {field: host array in that order}) of what the recorder holds."""
  state = jax.device_get(state)
  steps = np.asarray(state.steps)
  order = np.argsort(np.where(steps >= 0, steps, np.iinfo(np.int32).max))[:int(np.sum(steps >= 0))]
  fields = dict(state.norms._asdict())
  if state.health is not None:
    fields.update(state.health._asdict())
  return steps[order], {k: np.asarray(v)[order] for k, v in fields.items()}


def band_exit(values: np.ndarray, sigmas: float, history: int = HISTORY) -> tuple[int, float]:
  """(first index whose log10 value leaves the band of the finite values
  before it, its distance in band widths), or (-1, 0.0)."""
  with np.errstate(divide="ignore", invalid="ignore"):
    logs = np.log10(values.astype(np.float64))  # 0 -> -inf: a norm that drops to 0 leaves
  for t in range(1, len(values)):
    past = logs[:t][np.isfinite(logs[:t])]
    if np.isinf(logs[t]) and len(past):  # overflowed, or dropped to exactly 0
      return t, math.inf
    if len(past) < history or np.isnan(logs[t]):
      continue
    width = sigmas * max(float(np.std(past, ddof=1)), BAND_FLOOR)
    distance = abs(logs[t] - float(np.mean(past))) / width
    if distance > 1:
      return t, distance
  return -1, 0.0


def leaf_onset(norms: dict, i: int, sigmas: float) -> tuple[int, str, float]:
  """(index of the leaf's onset, what left its band, how far), or (-1, "", 0)."""
  found = []
  for kind, field in ((KINDS[0], "param_nonfinite"), (KINDS[1], "grad_nonfinite")):
    bad = np.nonzero(norms[field][:, i] > 0)[0]
    if bad.size:
      found.append((int(bad[0]), KINDS.index(kind), math.inf))
  for kind, field in ((KINDS[2], "update_norm"), (KINDS[3], "grad_norm")):
    t, distance = band_exit(norms[field][:, i], sigmas)
    if t >= 0:
      found.append((t, KINDS.index(kind), distance))
  if not found:
    return -1, "", 0.0
  t, kind, distance = min(found, key=lambda f: (f[0], f[1], -f[2]))
  return t, KINDS[kind], distance


def analyse(state: RecorderState, names, sigmas: float = 6.0) -> dict:
  """The window, every leaf's onset, the ranking and the verdict, as a dict
  (what ``forensics.json`` holds). ``names``: the leaves' names, or any
  pytree shaped like the parameters (named by their paths)."""
  if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
    names = leaf_names(names)
  steps, norms = window(state)
  return analyse_window(steps, norms, int(jax.device_get(state.fired_step)),
                        int(jax.device_get(state.reasons)), list(names), sigmas)


def window_of_report(report: dict) -> tuple:
  """(steps, norms, fired step, reason bits, names) back from a written
  ``forensics.json``: what :func:`analyse_window` reads again (another
  ``sigmas``, a redrawn figure)."""
  series = lambda field, dtype: np.stack(
      [np.asarray(leaf["series"][field], dtype) for leaf in report["leaves"]], axis=1)
  norms = {"loss": np.asarray(report["loss"], np.float64)}
  for field in ("grad_norm", "param_norm", "update_norm"):
    norms[field] = series(field, np.float64)
  for field in ("grad_nonfinite", "param_nonfinite"):
    norms[field] = series(field, np.int64)
  if all(set(HEALTH) <= set(leaf["series"]) for leaf in report["leaves"]):
    for field in HEALTH:
      norms[field] = series(field, np.float64)
  bits = sum(bit for bit, text in REASONS.items() if text in report["trigger"]["reasons"])
  fired = report["trigger"]["step"]
  return (np.asarray(report["steps"]), norms, -1 if fired is None else int(fired), bits,
          [leaf["name"] for leaf in report["leaves"]])


def analyse_window(steps, norms: dict, fired: int, reasons: int, names: list[str],
                   sigmas: float = 6.0) -> dict:
  """:func:`analyse` of a window already on the host."""
  n = norms["grad_norm"].shape[1] if norms["grad_norm"].ndim == 2 else 0
  if len(names) != n:
    raise ValueError(f"expected {n} leaf names (one per parameter leaf), got {len(names)}")
  leaves = []
  for i, name in enumerate(names):
    t, kind, distance = leaf_onset(norms, i, sigmas)
    with np.errstate(divide="ignore", invalid="ignore"):
      ratio = norms["update_norm"][:, i] / norms["param_norm"][:, i]
    g, _ = band_exit(norms["grad_norm"][:, i], sigmas)
    bad = np.nonzero(norms["grad_nonfinite"][:, i] > 0)[0]
    g = min([x for x in (g, int(bad[0]) if bad.size else -1) if x >= 0], default=-1)
    leaves.append({"name": name, "onset_step": int(steps[t]) if t >= 0 else None,
                   "gradient_onset_step": int(steps[g]) if g >= 0 else None,
                   "left_by": kind or None,
                   "band_widths": None if not math.isfinite(distance) else round(distance, 3),
                   "series": {"grad_norm": norms["grad_norm"][:, i],
                              "param_norm": norms["param_norm"][:, i],
                              "update_norm": norms["update_norm"][:, i], "update_ratio": ratio,
                              "grad_nonfinite": norms["grad_nonfinite"][:, i],
                              "param_nonfinite": norms["param_nonfinite"][:, i],
                              **{f: norms[f][:, i] for f in HEALTH if f in norms}}})
  key = lambda leaf: (math.inf if leaf["onset_step"] is None else leaf["onset_step"],
                      KINDS.index(leaf["left_by"]) if leaf["left_by"] else len(KINDS),
                      -(leaf["band_widths"] if leaf["band_widths"] is not None else math.inf))
  ranked = sorted(leaves, key=key)
  loss_t, _ = band_exit(norms["loss"], sigmas)
  return {"trigger": {"step": fired if fired >= 0 else None,
                      "reasons": [text for bit, text in REASONS.items() if reasons & bit]},
          "steps": steps, "loss": norms["loss"],
          "loss_onset_step": int(steps[loss_t]) if loss_t >= 0 else None,
          "ranking": [leaf["name"] for leaf in ranked], "verdict": _verdict(ranked, steps),
          "leaves": leaves}


def _verdict(ranked: list[dict], steps: np.ndarray) -> dict:
  """The culprit: the leaves whose parameters went non-finite first; else
  the data, when most leaves' gradients left their band at the first onset
  step together; else the leaves that moved first."""
  timed = [leaf for leaf in ranked if leaf["onset_step"] is not None]
  if not timed:
    return {"culprit": "none", "step": None, "leaves": [],
            "text": "no leaf left its band in the window"}
  step = timed[0]["onset_step"]
  first = [leaf for leaf in timed if leaf["onset_step"] == step]
  before = int(np.sum(np.asarray(steps) < step))
  if before < HISTORY:
    return {"culprit": "undetermined", "step": step, "leaves": [leaf["name"] for leaf in first],
            "text": f"{len(first)} leaves left their band at step {step}, with only {before} "
                    f"step{'s' * (before != 1)} recorded before it: too few to tell what moved "
                    "first (a run that diverges from its first steps: lower the learning "
                    "rate)"}
  poisoned = [leaf["name"] for leaf in first if leaf["left_by"] == KINDS[0]]
  if poisoned:
    return {"culprit": "parameters", "step": step, "leaves": poisoned,
            "text": f"non-finite values appeared in the parameters of {', '.join(poisoned)} "
                    f"at step {step}"}
  layer = lambda name: name.rsplit("/", 1)[0]
  layers = {layer(leaf["name"]) for leaf in ranked}
  moved = {layer(leaf["name"]) for leaf in first if leaf["gradient_onset_step"] == step}
  if len(moved) >= max(2, DATA_SHARE * len(layers)):
    return {"culprit": "data", "step": step, "leaves": [leaf["name"] for leaf in first],
            "text": f"gradients in {len(moved)} of {len(layers)} layers left their band together "
                    f"at step {step}: that step's batch (or loss) did it, not one layer"}
  names = [leaf["name"] for leaf in first]
  return {"culprit": "leaves", "step": step, "leaves": names,
          "text": f"{', '.join(names)} moved first, at step {step} (its {first[0]['left_by']})"
                  + _adam_reason(first[0], step, steps)}


def _adam_reason(leaf: dict, step: int, steps: np.ndarray) -> str:
  """Why, where the optimizer tier was recorded and Adam's regime changed at
  the onset: its steps stopped (or started) being epsilon-dominated."""
  eps = leaf["series"].get("eps_dominated")
  if eps is None:
    return ""
  at = int(np.searchsorted(steps, step))
  if at == 0 or at >= len(eps) or abs(eps[at] - eps[at - 1]) < 0.5:
    return ""
  grad = leaf["series"]["grad_norm"][at]
  return (f"; Adam's epsilon dominated sqrt(v-hat) on {eps[at - 1]:.0%} of its coordinates "
          f"before and {eps[at]:.0%} at that step, with ||g|| = {grad:.2g}: "
          + ("a too small epsilon turns near-zero gradients into full-size steps"
             if eps[at] < eps[at - 1] else "its steps are now damped by epsilon"))
