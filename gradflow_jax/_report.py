"""A self-contained HTML report: findings first, then tables, then plots
(embedded as base64 PNG, so the file needs no network to be viewed)."""

from __future__ import annotations

import base64
import html
import os

from gradflow_jax import _io

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
"""


def _finding_html(label: str, f) -> str:
  ev = ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}"
                 for k, v in f.evidence.items())
  layers = f" (layers {', '.join(map(str, f.layers))})" if f.layers else ""
  return (f'<div class="f {f.severity}"><b>{f.severity.upper()}</b> '
          f'<b>{html.escape(label)}</b>: {html.escape(f.message)}{html.escape(layers)}<br>'
          f'Fix: {html.escape(f.fix)}<div class="ev">{html.escape(ev)}</div></div>')


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
    images: PNG paths to embed.
  """
  parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
  if notes:
    parts.append(f"<p>{html.escape(notes)}</p>")
  parts.append("<h2>Findings</h2>")
  for label, found in findings:
    if not found:
      parts.append(f'<div class="f ok"><b>OK</b> <b>{html.escape(label)}</b>: no warnings</div>')
    parts.extend(_finding_html(label, f) for f in found)
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


def taps_html(stats, jac=None) -> str:
  """The taps table of a model (as ``_render.taps_table``) in HTML."""
  import numpy as np
  from gradflow_jax import _plots
  med, unconverged = _plots.jacobian_summary(jac) if jac is not None else (None, None)
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
