"""Terminal renderers (rich). They format numbers already measured."""

from __future__ import annotations

import math

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def fmt(v, pct=False) -> str:
  """A number for a table: NaN/Inf spelt out, fractions as percentages."""
  v = float(v)
  if not math.isfinite(v):
    return "[red]nan[/]" if math.isnan(v) else f"[red]{'+' if v > 0 else '-'}inf[/]"
  if pct:
    return f"{100 * v:.1f}%"
  if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
    return f"{v:.2e}"
  return f"{v:.3g}"


def layer_table(run: dict) -> Table:
  """One run, one row per hidden layer."""
  t = Table(title=run["label"], title_justify="left", title_style="bold",
            header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
  for col in ("layer", "mean", "std", "min", "max", "sat", "dead", "zero", "|dL/dz|",
              "|dL/dW|"):
    t.add_column(col, justify="right", no_wrap=True)
  a, g = run["activation_stats"], run["gradient_stats"]
  for l in range(len(a["std"])):
    t.add_row(str(l), fmt(a["mean"][l]), fmt(a["std"][l]), fmt(a["min"][l]), fmt(a["max"][l]),
              fmt(a["saturation_fraction"][l], True), fmt(a["dead_fraction"][l], True),
              fmt(a["zero_fraction"][l], True), fmt(g["preact_grad_norm"][l]),
              fmt(g["weight_grad_norm"][l]))
  return t


def summary_table(runs: list[dict]) -> Table:
  """A row per run: the headline numbers and its verdict."""
  t = Table(title="Summary", title_justify="left", title_style="bold", header_style="bold",
            box=box.SIMPLE_HEAD, pad_edge=False)
  for col in ("run", "last std", "max sat", "max dead", "|dL/dz| 0/last", "loss", "verdict"):
    t.add_column(col, justify="left" if col in ("run", "verdict") else "right",
                 no_wrap=col != "verdict")
  for run in runs:
    a, g = run["activation_stats"], run["gradient_stats"]
    pg = np.asarray(g["preact_grad_norm"], float)
    ratio = pg[0] / pg[-1] if pg[-1] else float("nan")
    kinds = [f"[{SEVERITY_STYLE[f.severity]}]{f.kind.replace('_', ' ')}[/]" for f in run["findings"]]
    t.add_row(run["label"], fmt(a["std"][-1]), fmt(np.max(a["saturation_fraction"]), True),
              fmt(np.max(a["dead_fraction"]), True), fmt(ratio), fmt(g["loss"]),
              ", ".join(kinds) or "[green]healthy[/]")
  return t


def print_findings(console: Console, runs: list[dict]) -> None:
  for run in runs:
    for f in run["findings"]:
      style = SEVERITY_STYLE[f.severity]
      layers = f" (layers {list(f.layers)})" if len(f.layers) else ""
      fix = f" Fix: {f.fix}" if f.fix else ""
      console.print(f"[{style}]{f.severity.upper()}[/] "
                    + escape(f"{run['label']}: {f.message}{layers}.{fix}"), highlight=False)


def depth_table(points: list[dict]) -> Table:
  """A row per grid point: theory (chi_1) beside the median measurements."""
  t = Table(title="Depth sweep (median over seeds and inputs)", title_justify="left",
            title_style="bold", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
  for col in ("point", "chi1", "depth", "||J||_2", "mean s^2", "theory s^2", "first NaN/Inf"):
    t.add_column(col, justify="left" if col == "point" else "right", no_wrap=True)
  for p in points:
    deepest = len(p["depths"]) - 1
    sd = list(p["spectrum_depths"])
    with np.errstate(all="ignore"):
      top = np.nanmedian(np.asarray(p["spectral_norm"], float)[..., -1])
      msq = np.nanmedian(np.asarray(p["mean_sq_singular_value"], float)[..., deepest])
    t.add_row(p["label"], fmt(p["chi1"]) if p["chi1"] is not None else "-", str(sd[-1]),
              fmt(top), fmt(msq), fmt(p["theory_mean_sq_singular_value"][deepest]),
              str(p["first_nonfinite_depth"]) if p["first_nonfinite_depth"] else "-")
  return t


def rnn_table(runs: list[dict]) -> Table:
  """A row per scale of W: the whole-sequence norms and the Pascanu bound."""
  t = Table(title="RNN through time (median over sequences)", title_justify="left",
            title_style="bold", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
  for col in ("scale", "||W||_2", "||dh_T/dh_0||", "Pascanu bound", "||dL/dh_0||", "||dL/dh_T||"):
    t.add_column(col, justify="right", no_wrap=True)
  for r in runs:
    t.add_row(f"{r['scale_kind']} {r['scale']:.3g}", fmt(r["weight_norm"]),
              fmt(np.median(r["jacobian_norm"][:, 0])), fmt(r["pascanu_bound"][0]),
              fmt(np.median(r["state_grad_norm"][:, 0])), fmt(np.median(r["state_grad_norm"][:, -1])))
  return t


def train_table(records: list[dict]) -> Table:
  """A row per training run: final loss and test accuracy, ||dL/dz|| at the first
  hidden layer (g_0) at the start and end, clipping events, the dead-unit
  fraction at the last step (mean over layers) and its peak (any layer, any
  step), and the step where the NaN/Inf guard fired."""
  t = Table(title="Training runs", title_justify="left", title_style="bold", header_style="bold",
            box=box.SIMPLE_HEAD, pad_edge=False)
  for col in ("run", "steps", "loss", "acc", "|g_0| start", "|g_0| end", "clips", "dead end",
              "dead peak", "NaN at"):
    t.add_column(col, justify="left" if col == "run" else "right", no_wrap=True)
  for r in records:
    logs = r["logs"]
    g0 = np.asarray(logs["preact_grad_norm"])[:, 0]
    t.add_row(r["label"], str(r["steps_run"]), fmt(r["final_loss"]), fmt(r["final_accuracy"], True),
              fmt(g0[0]), fmt(g0[-1]), f"{int(np.sum(logs['clipped']))}",
              fmt(np.mean(np.asarray(logs["dead_fraction"])[-1]), True),
              fmt(np.max(logs["dead_fraction"]), True),
              "-" if r["stopped_at"] is None else str(r["stopped_at"]))
  return t


def taps_table(stats, jac=None) -> Table:
  """A row per tap of a model: role and activation, the tensor's moments,
  saturation and dead fractions, ||dL/dtap|| and the local Jacobian norm
  (median over examples; '~' marks a value that did not converge)."""
  from gradflow_jax.render import _model_plots
  t = Table(title="Taps", title_justify="left", title_style="bold", header_style="bold",
            box=box.SIMPLE_HEAD, pad_edge=False)
  for col in ("tap", "role", "act", "mean", "std", "sat", "dead", "zero", "|dL/dtap|",
              "|J| local", "NaN/Inf"):
    t.add_column(col, justify="left" if col in ("tap", "role", "act") else "right", no_wrap=True)
  a = stats.activations
  med, unconverged = _model_plots.jacobian_summary(jac) if jac is not None else (None, None)
  for i, name in enumerate(stats.names):
    if med is None or (not np.isfinite(med[i]) and not unconverged[i]):
      j = "-"
    elif unconverged[i]:
      j = "~" + fmt(np.max(np.asarray(jac.norm, float)[:, i]))
    else:
      j = fmt(med[i])
    t.add_row(name, stats.roles[i], stats.activation_names[i] or "-", fmt(a.mean[i]),
              fmt(a.std[i]), "-" if not np.isfinite(a.saturation_fraction[i])
              else fmt(a.saturation_fraction[i], True), fmt(a.dead_fraction[i], True),
              fmt(a.zero_fraction[i], True), fmt(stats.tap_grad_norm[i]), j,
              str(int(a.nonfinite[i])))
  return t


def model_train_table(result, on: str = "") -> Table:
  """A --model training run: per tap, its first and last logged
  ||dL/d tap||, activation std and dead fraction. ``on``: what it trained
  on, for the title."""
  t = Table(title=f"{len(result.losses)} steps{' on ' + on if on else ''}, final loss "
                  f"{fmt(result.losses[-1]) if len(result.losses) else '-'}"
                  + (f", test accuracy {fmt(result.accuracy, pct=True)}"
                     if result.accuracy is not None else "")
                  + (f", stopped at step {result.stopped_at}" if result.stopped_at is not None
                     else ""))
  for col in ("tap", "role", "activation", "||dL/d tap|| first", "last", "std first", "last",
              "dead first", "last"):
    t.add_column(col, justify="left" if col in ("tap", "role", "activation") else "right")
  flows = result.flows
  for i, name in enumerate(result.names):
    cells = [escape(name), result.roles[i], escape(str(result.activation_names[i] or "-"))]
    for get, pct in ((lambda f: f.tap_grad_norm[i], False), (lambda f: f.activations.std[i], False),
                     (lambda f: f.activations.dead_fraction[i], True)):
      cells += [fmt(float(get(flows[0])), pct) if flows else "-",
                fmt(float(get(flows[-1])), pct) if flows else "-"]
    t.add_row(*cells)
  return t


def _med(summary: dict) -> str:
  return "-" if summary["median"] is None else fmt(summary["median"])


def depth_study_rows(result: dict) -> list[list[str]]:
  """Per depth: taps, median ||J||_2 [10-90%], mean s^2, theory, first/last
  tap gradient ratio, unconverged count, Lanczos-vs-exact gap (plain text)."""
  rows = []
  for d in result["depths"]:
    sm = d["summary"]
    band = ("" if sm["spectral_norm"]["median"] is None else
            f" [{fmt(sm['spectral_norm']['q10'])}, {fmt(sm['spectral_norm']['q90'])}]")
    theory = d["theory_mean_sq_singular_value"]
    gap = d["lanczos_vs_exact_max_rel_diff"]
    rows.append([str(d["depth"]), str(len(d["taps"])), _med(sm["spectral_norm"]) + band,
                 _med(sm["mean_sq_singular_value"]), "-" if theory is None else fmt(theory),
                 _med(sm["first_over_last_grad_norm"]), str(sm["unconverged"]),
                 "-" if gap is None else f"{gap:.1e}"])
  return rows


DEPTH_STUDY_COLUMNS = ("depth", "taps", "||J||_2 median [10%, 90%]", "mean s^2", "theory s^2",
                       "|dL/d first| / |dL/d last|", "unconverged", "Lanczos vs SVD")


def depth_study_table(result: dict) -> Table:
  d0 = result["depths"][0]
  t = Table(title=f"Depth study: J = d {d0['target']} / d {d0['source']} (over seeds x examples)",
            title_justify="left", title_style="bold", header_style="bold", box=box.SIMPLE_HEAD,
            pad_edge=False)
  for col in DEPTH_STUDY_COLUMNS:
    t.add_column(col, justify="right", no_wrap=True)
  for row in depth_study_rows(result):
    t.add_row(*(escape(c) if "[" in c else c for c in row))
  return t


def depth_study_note(result: dict) -> str:
  d0 = result["depths"][0]
  s = result["settings"]
  inter = (" The examples interact (e.g. BatchNorm in training mode): each example's Jacobian "
           "is taken with the rest of the batch held fixed." if result["examples_interact"] else "")
  if result.get("input_nonfinite"):
    inter += (f" The factory's batch holds {result['input_nonfinite']} non-finite values: the "
              "loss and gradients are NaN, and so are the Jacobians of those examples.")
  return (f"{s['seeds']} seeds x {s['examples']} examples per depth on {result['devices']} "
          f"device(s). J = d {d0['target']} / d {d0['source']} per example: spectral norm by "
          f"Lanczos ({s['steps']} steps, unconverged values left out), mean squared singular "
          f"value {'by exact SVD' if d0['exact'] else 'by Hutchinson'}." + inter)


def width_study_table(result: dict) -> Table:
  t = Table(title="Width study: log-log slope of coordinate size against width "
                  "(0: stable, 1: grows like width)", title_justify="left", title_style="bold",
            header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
  widths = [r["width"] for r in result["widths"]]
  for col in ("tap", f"rms at init, width {widths[0]}", "slope at init",
              "rms change after last step", "slope after last step"):
    t.add_column(col, justify="left" if col == "tap" else "right", no_wrap=True)
  sl = result["slopes"]
  for i, name in enumerate(result["taps"]):
    first = result["widths"][0]
    t.add_row(name, fmt(first["rms_init"][:, i].mean()),
              "-" if sl["init"] is None or sl["init"][i] is None else f"{sl['init'][i]:+.2f}",
              fmt(first["rms_change"][:, -1, i].mean()),
              "-" if sl["last_step"] is None or sl["last_step"][i] is None
              else f"{sl['last_step'][i]:+.2f}")
  return t
