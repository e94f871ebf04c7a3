"""A self-contained HTML report: findings first, then tables, then plots
(embedded as base64 PNG, so the file needs no network to be viewed)."""

from __future__ import annotations

import base64
import html
import os

from gradflow_jax import _display, _io

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.f{padding:.5em .8em;margin:.4em 0;border-left:5px solid #999;background:#fafafa}
.error{border-color:#c62828;background:#fdecea}.warning{border-color:#f9a825;background:#fff8e1}
.info{border-color:#1565c0;background:#e8f1fb}.ok{border-color:#2e7d32;background:#edf7ed}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.ev{color:#555;font-size:.85em}
.matrix td,.matrix th{text-align:center}.matrix td:first-child{text-align:left}
.matrix th{font-weight:normal;font-size:.8em;writing-mode:vertical-rl;transform:rotate(180deg)}
.matrix th:first-child{writing-mode:horizontal-tb;transform:none;vertical-align:bottom}
td.error{background:#fdecea;color:#c62828}td.warning{background:#fff8e1;color:#a66f00}
td.info{background:#e8f1fb;color:#1565c0}.okm{color:#2e7d32}
"""


_SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
_MARK = {"error": "&#10006;", "warning": "&#9888;", "info": "i"}


def _evidence(f) -> str:
  return ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}"
                   for k, v in f.evidence.items())


def _finding_html(labels: list[str], f, evidence: list[str]) -> str:
  """One card for a finding that ``labels`` (one run or several) share."""
  layers = f" (layers {', '.join(map(str, f.layers))})" if f.layers else ""
  who = html.escape(labels[0]) if len(labels) == 1 else (
      f"{len(labels)} runs: " + html.escape("; ".join(labels)))
  ev = "<br>".join(html.escape(e) for e in dict.fromkeys(evidence) if e)
  return (f'<div class="f {f.severity}"><b>{f.severity.upper()}</b> <b>{who}</b>: '
          f'{html.escape(f.message)}{html.escape(layers)}<br>'
          f'Fix: {html.escape(f.fix)}<div class="ev">{ev}</div></div>')


def grouped_findings(findings: list[tuple[str, list]]) -> list[tuple[list[str], object, list]]:
  """Findings that say the same thing (kind, message, layers, fix) of several
  runs, merged: [(run labels, finding, evidence texts)], most severe first."""
  groups: dict = {}
  for label, found in findings:
    for f in found:
      key = (f.severity, f.kind, f.message, tuple(f.layers), f.fix)
      labels, first, ev = groups.setdefault(key, ([], f, []))
      labels.append(label)
      ev.append(_evidence(f))
  return sorted(groups.values(), key=lambda g: _SEVERITY_RANK.get(g[1].severity, 3))


def summary_matrix_html(findings: list[tuple[str, list]]) -> str:
  """Runs x finding kinds: how many findings of each kind each run has, marked
  by the most severe; the kinds ordered most severe first."""
  kinds: dict[str, str] = {}
  for _, found in findings:
    for f in found:
      if f.kind not in kinds or _SEVERITY_RANK[f.severity] < _SEVERITY_RANK[kinds[f.kind]]:
        kinds[f.kind] = f.severity
  order = sorted(kinds, key=lambda k: (_SEVERITY_RANK[kinds[k]], k))
  head = "<th>run</th>" + "".join(f"<th class='{kinds[k]}'>{html.escape(k)}</th>" for k in order)
  rows = []
  for label, found in findings:
    cells = []
    for k in order:
      mine = [f for f in found if f.kind == k]
      if not mine:
        cells.append("<td></td>")
        continue
      worst = min((f.severity for f in mine), key=_SEVERITY_RANK.get)
      n = f" {len(mine)}" if len(mine) > 1 else ""
      cells.append(f"<td class='{worst}' title='{worst}'>{_MARK[worst]}{n}</td>")
    status = "" if found else " <span class='okm'>&#10004; no findings</span>"
    rows.append(f"<tr><td>{html.escape(label)}{status}</td>{''.join(cells)}</tr>")
  return f"<table class='matrix'><tr>{head}</tr>{''.join(rows)}</table>"


def table_html(headers: list[str], rows: list[list]) -> str:
  head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
  body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                 for r in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def write_report(path, title: str, findings: list[tuple[str, list]], tables: list[tuple[str, str]],
                 images: list[str], notes: str = "") -> None:
  """Writes ``report.html`` atomically.

  Args:
    findings: (run label, [Finding]) pairs; runs without findings are listed
      as healthy.
    tables: (heading, HTML table) pairs.
    images: PNG paths to embed (any other file, e.g. a log.jsonl listed
      beside them, is left out: it is no image).
  """
  images = [p for p in images if str(p).lower().endswith(".png")]
  parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
  if notes:
    parts.append(f"<p>{html.escape(notes)}</p>")
  if any(found for _, found in findings):
    parts.append("<h2>At a glance</h2><p>Each run against each kind of finding (&#10006; error, "
                 "&#9888; warning, i info; a number counts several of one kind). The details "
                 "follow, a card per distinct finding.</p>" + summary_matrix_html(findings))
  if findings:
    parts.append("<h2>Findings</h2>")
  for label, found in findings:
    if not found:
      parts.append(f'<div class="f ok"><b>OK</b> <b>{html.escape(label)}</b>: no warnings</div>')
  parts.extend(_finding_html(labels, f, ev) for labels, f, ev in grouped_findings(findings))
  for heading, table in tables:
    parts.append(f"<h2>{html.escape(heading)}</h2>{table}")
  if images:
    parts.append("<h2>Plots</h2>")
  for img in images:
    with open(img, "rb") as fh:
      data = base64.b64encode(fh.read()).decode()
    parts.append(f"<h3>{html.escape(os.path.basename(img))}</h3>"
                 f"<img alt='{html.escape(os.path.basename(img))}' src='data:image/png;base64,{data}'>")
  parts.append("</body></html>\n")
  _io.atomic_write_bytes(path, "".join(parts).encode())


def _num(v, pct: bool = False) -> str:
  """A number for an HTML table: '-' for None, NaN/Inf spelt out."""
  import math
  if v is None:
    return "-"
  v = float(v)
  if not math.isfinite(v):
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
  if pct:
    return f"{100 * v:.1f}%"
  return f"{v:.3g}"


def test_accuracy_text(payload: dict) -> str:
  """The test accuracy of a ``train --model`` run as the report states it."""
  acc = payload.get("test_accuracy")
  if acc is None:
    return ("not measured (the targets are not integer class labels, or the output is not "
            "(batch, classes))")
  return f"{100 * float(acc):.1f}% on {payload.get('data', 'the test set')}"


def model_train_tables(payload: dict) -> list[tuple[str, str]]:
  """The tables of a ``train --model`` report, from its results.json
  payload: the run (data, settings, steps, final loss, test accuracy, where
  the NaN/Inf guard fired) and per tap its first and last logged ||dL/d tap||,
  std and dead fraction."""
  s = payload.get("settings", {})
  stopped = payload.get("stopped_at")
  rows = [["model", payload.get("model", "-")], ["data", payload.get("data", "-")],
          ["loss", payload.get("loss_name", "-")],
          ["optimizer", f"{s.get('optimizer', '-')}, lr {s.get('lr', '-')}, batch "
                        f"{s.get('batch_size', '-')}, "
                        + ("no clipping" if s.get("clip") is None else f"clip {s['clip']:g}")],
          ["steps run", f"{payload.get('steps_run', '-')} of {s.get('steps', '-')} (logged every "
                        f"{s.get('every', '-')})"],
          ["final mini-batch loss", _num(payload.get("final_loss"))],
          ["test accuracy", test_accuracy_text(payload)],
          ["NaN/Inf", "none" if stopped is None else
           f"first at step {stopped} (tap {payload.get('first_nonfinite_tap') or '-'}); "
           f"{s.get('on_nonfinite', 'stop')}"]]
  run = table_html(["", ""], rows).replace("<tr><th></th><th></th></tr>", "")
  taps = []
  stats = payload.get("tap_stats", {})
  for i, name in enumerate(payload.get("taps", [])):
    t = stats.get(name, {})

    def ends(key, pct=False):
      v = t.get(key) or []
      return [_num(v[0], pct), _num(v[-1], pct)] if v else ["-", "-"]
    roles = payload.get("roles", [])
    acts = payload.get("activation_names", [])
    taps.append([name, roles[i] if i < len(roles) else "-",
                 (acts[i] if i < len(acts) else None) or "-", *ends("grad_norm"),
                 *ends("std"), *ends("dead_fraction", True)])
  steps = payload.get("logged_steps") or []
  span = f" (first and last logged step: {steps[0]}, {steps[-1]})" if steps else ""
  return [("Run", run),
          ("Taps" + span, table_html(["tap", "role", "activation", "||dL/d tap|| first", "last",
                                      "std first", "last", "dead first", "last"], taps))]


def taps_html(stats, jac=None) -> str:
  """The taps table of a model (as ``_render.taps_table``) in HTML."""
  import numpy as np
  from gradflow_jax.render import _model_plots
  med, unconverged = _model_plots.jacobian_summary(jac) if jac is not None else (None, None)
  a = stats.activations
  rows = []
  for i, n in enumerate(stats.names):
    j = "-" if med is None or not np.isfinite(med[i]) else f"{med[i]:.3g}"
    if unconverged is not None and unconverged[i]:
      j = "not converged"
    sat = a.saturation_fraction[i]
    rows.append([n, stats.roles[i], stats.activation_names[i] or "-", f"{a.std[i]:.3g}",
                 "-" if not np.isfinite(sat) else f"{sat:.1%}", f"{a.dead_fraction[i]:.1%}",
                 f"{stats.tap_grad_norm[i]:.3g}", j])
  return table_html(["tap", "role", "activation", "std", "saturated", "dead", "|dL/dtap|",
                     "|J| local"], rows)


_CARD_STYLE = ("<style>.gf .f{padding:.4em .7em;margin:.3em 0;border-left:5px solid #999}"
               ".gf .error{border-color:#c62828}.gf .warning{border-color:#f9a825}"
               ".gf .info{border-color:#1565c0}.gf .ok{border-color:#2e7d32}"
               ".gf .ev{color:#666;font-size:.85em}</style>")


def findings_and_taps_html(findings: list, stats, jac=None) -> str:
  """A model's findings as cards, then its taps table: a notebook's view of
  what report.html shows (styles scoped to this block)."""
  cards = "".join(_finding_html(labels, f, ev)
                  for labels, f, ev in grouped_findings([("model", findings)]))
  cards = cards or '<div class="f ok">no findings</div>'
  return f'{_CARD_STYLE}<div class="gf">{cards}{taps_html(stats, jac)}</div>'


def analysis_html(analysis) -> str:
  """A :class:`ModelAnalysis` for notebooks: its findings and taps table."""
  return findings_and_taps_html(analysis.findings, analysis.stats, analysis.jacobians)


_display.register("model_analysis", analysis_html)
