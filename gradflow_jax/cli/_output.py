"""What every CLI subcommand shares: the console, progress, drawing plots
and writing results atomically."""

from __future__ import annotations

import contextlib
import datetime
import os
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def _console(args) -> Console:
  """Stdout console; 110 columns when piped (rich would assume 80)."""
  console = Console(quiet=args.quiet or args.json, highlight=False)
  if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 160
  return console


@contextlib.contextmanager
def progress_bar(args, total: int, what: str):
  """A rich progress bar (silent with --quiet/--json); yields ``advance(label)``."""
  console = Console(stderr=True, quiet=args.quiet or args.json)
  if not console.is_terminal:  # a log: one plain line per step, nothing redrawn
    count = {"n": 0}

    def advance_plain(label: str):
      count["n"] += 1
      if not console.quiet:
        print(f"{what}: {label} ({count['n']}/{total})", file=sys.stderr, flush=True)
    yield advance_plain
    return
  cols = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
          TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
  with Progress(*cols, console=console, transient=True) as prog:
    task = prog.add_task(what, total=total)
    state = {"n": 0}

    def advance(label: str):
      if state["n"]:
        prog.advance(task)
      state["n"] += 1
      prog.update(task, description=f"{what}: {label} (compiling + running)")
    yield advance
    prog.update(task, completed=total)


def _draw_plots(args, plots: dict) -> tuple[list[str], dict]:
  """Draws each plot into ``args.out``: (paths written, {file: why skipped}).
  A plot that cannot be drawn is skipped with a note on stderr; it never
  costs the results (written before any plot)."""
  written, skipped = [], {}
  if getattr(args, "no_plots", False):
    return written, skipped
  for fname, draw in plots.items():
    path = os.path.join(args.out, fname)
    try:
      draw(path)
    except Exception as e:  # any plotting failure: the numbers are already saved
      skipped[fname] = " ".join(f"{type(e).__name__}: {e}".split())
      print(f"note: {fname} not drawn ({skipped[fname]})", file=sys.stderr)
    else:
      written.append(path)
  return written, skipped


def _write_outputs(args, name: str, payload: dict, plots: dict, extra=(),
                   after_plots=None) -> list[str]:
  """results.json first, then the plots, then ``after_plots(written) -> path``
  (a report that embeds them), then results.json again listing every file
  written (``extra`` too) and any plot that could not be drawn."""
  from gradflow_jax import _io
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "results.json")
  head = {"command": name, "created": datetime.datetime.now().isoformat(timespec="seconds"),
          **_versions(), **payload}
  written = list(extra)
  _io.write_json(path, {**head, "files": [os.path.basename(p) for p in written]})
  drawn, skipped = _draw_plots(args, plots)
  written += drawn
  if after_plots is not None:
    written.append(after_plots(list(written)))
  final = {**head, "files": [os.path.basename(p) for p in written]}
  if skipped:
    final["plots_not_drawn"] = skipped
  _io.write_json(path, final)
  return [path] + written


def _versions() -> dict:
  import jax
  import gradflow_jax
  return {"gradflow_jax_version": gradflow_jax.__version__, "jax_version": jax.__version__,
          "backend": jax.default_backend()}


def _finish(args, console: Console, written: list[str]) -> None:
  if args.json:
    with open(written[0]) as f:
      print(f.read(), end="")
  elif args.quiet:
    print("\n".join(written))
  else:
    console.print("wrote " + ", ".join(written))


def _slug(text: str) -> str:
  return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_")[:40]


def _load_data(spec: str, seed: int):
  from gradflow_jax import _data
  if spec == "digits":
    return _data.load_digits(seed)
  if spec == "teacher":
    return _data.teacher_task(seed=seed)
  if spec.endswith(".npz"):
    return _data.load_npz_dataset(spec)
  raise ValueError(f"expected --data digits, teacher or a .npz file, got {spec!r}")
