"""What each CLI subcommand does: call the library, render, write files."""

from __future__ import annotations

import os
import sys

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from gradflow_jax.cli import _model_commands
from gradflow_jax.cli._model_commands import _model_errors, diagnose, train_model
from gradflow_jax.cli._sizes import check_size as _check_size
from gradflow_jax.cli._output import (_console, _draw_plots, _finish, _load_data, _slug, _versions,
                                     _write_outputs, progress_bar)

forensics = _model_commands.forensics  # analyze.py forensics RUN_DIR


def compare(args, force_report: bool = False) -> int:
  from gradflow_jax.models import _loading, _mlp
  from gradflow_jax.render import _plots, _render
  from gradflow_jax.studies import _compare
  if getattr(args, "model", None):
    given = [f"--{k.replace('_', '-')}" for k, v in args.mlp_option_defaults.items()
             if getattr(args, k) != v]
    if given:
      raise ValueError(f"expected {', '.join(given)} only for the built-in MLP (a --model sets "
                       "its own architecture)")
    return diagnose(args)
  console = _console(args)
  x = _loading.load_inputs(args.inputs) if args.inputs else None
  sizes = dict(in_dim=args.in_dim, width=args.width, depth=args.depth, out_dim=args.classes)
  if args.weights:
    sizes = _loading.infer_shapes(args.weights, args.residual)
  if x is not None and x.shape[1] != sizes["in_dim"]:
    raise ValueError(f"expected inputs with {sizes['in_dim']} features, got {x.shape[1]}")
  settings = _compare.CompareSettings(
      **sizes, batch=x.shape[0] if x is not None else args.batch_size,
      activations=tuple(args.activations),
      shared_init=None if args.init.lower() == "none" else args.init,
      norm=None if args.norm == "none" else args.norm, residual=args.residual,
      loss=args.loss or "cross_entropy", sigma_b=args.sigma_b, seed=args.seed)
  settings.configs()  # validates every name before anything is compiled
  _check_size(args, settings.estimated_bytes(), settings.estimated_seconds(), "comparison",
              "--width, --depth or --batch-size")
  params_from = (lambda cfg: _mlp.load_npz(args.weights, cfg)) if args.weights else None
  n_runs = len(settings.activations) * (1 if params_from or not settings.shared_init else 2)
  with progress_bar(args, n_runs, "analysing") as advance:
    result = _compare.run_compare(settings, x, params_from, on_run=advance)
  runs = result["runs"]
  if result["input_nonfinite"]:
    console.print(f"[bold red]inputs contain {result['input_nonfinite']} NaN/Inf values[/]")
  if not args.quiet and not args.json:
    for run in runs:
      console.print(_render.layer_table(run))
    console.print(_render.summary_table(runs))
    _render.print_findings(console, runs)
  payload = {"settings": result["settings"], "weights": args.weights, "inputs": args.inputs,
             "input_nonfinite": result["input_nonfinite"],
             "runs": [{**r, "findings": [f._asdict() for f in r["findings"]]} for r in runs]}
  plots = {"activation_stats.png": lambda p: _plots.plot_activation_stats(
               runs, p, result["settings"]),
           "grad_norms.png": lambda p: _plots.plot_grad_norms(runs, p, result["settings"]),
           "activation_curves.png": lambda p: _plots.plot_activation_curves(settings.activations, p)}
  report = None
  if force_report or args.report:
    report = lambda pngs: _compare_report(args, settings, runs, pngs)
  _finish(args, console, _write_outputs(args, "compare", payload, plots, after_plots=report))
  return 0


def _compare_report(args, settings, runs, written) -> str:
  """report.html of the comparison: the findings each run already has (the
  same the terminal and results.json show), the summary, the plots."""
  from gradflow_jax.render import _report
  findings = [(run["label"], run["findings"]) for run in runs]
  rows = []
  for run in runs:
    a, g = run["activation_stats"], run["gradient_stats"]
    pg = np.asarray(g["preact_grad_norm"], float)
    rows.append([run["label"], f"{a['std'][-1]:.3g}", f"{np.max(a['saturation_fraction']):.1%}",
                 f"{np.max(a['dead_fraction']):.1%}", f"{pg[0] / pg[-1]:.3g}", f"{g['loss']:.3g}"])
  table = _report.table_html(["run", "last std", "max saturated", "max dead",
                              "|dL/dz| layer 0 / last", "loss"], rows)
  path = os.path.join(args.out, "report.html")
  _report.write_report(path, "gradflow_jax report", findings, [("Summary", table)],
                       [p for p in written if p.endswith(".png")],
                       notes=f"{settings.depth} hidden layers of width {settings.width}, batch "
                             f"{settings.batch}, loss {settings.loss}, seed {settings.seed}.")
  return path


_SWEEP_ONLY = ("activations", "inits", "sigma_w", "sigma_b", "max_depth", "batch_size",
               "spectrum_depths")
_STUDY_ONLY = ("depths", "examples", "loss", "output")
_SWEEP_DEFAULTS = {"activations": ("tanh", "relu"), "inits": ("auto",), "sigma_w": (None,),
                   "sigma_b": (0.0,), "max_depth": 200, "width": 64, "batch_size": 4,
                   "spectrum_depths": 16}


def _refuse(args, names, why: str) -> None:
  given = [f"--{k.replace('_', '-')}" for k in names if getattr(args, k, None) not in (None, False)]
  if given:
    raise ValueError(f"expected {', '.join(given)} {why}")


def depth(args) -> int:
  if args.model:
    return depth_study(args)
  import jax
  from gradflow_jax.render import _depth_plots
  from gradflow_jax.studies import _sweep
  _refuse(args, _STUDY_ONLY, "only with --model (a family study)")
  for k, v in _SWEEP_DEFAULTS.items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  if args.x64:
    jax.config.update("jax_enable_x64", True)
  console = _console(args)
  settings = _sweep.SweepSettings(
      activations=tuple(args.activations), inits=tuple(args.inits), sigma_ws=tuple(args.sigma_w),
      sigma_bs=tuple(args.sigma_b), max_depth=args.max_depth, width=args.width,
      batch=args.batch_size, seeds=args.seeds, spectrum_depths=args.spectrum_depths,
      dtype="float64" if args.x64 else "float32", seed=args.seed)
  groups = settings.groups()  # validates names before anything is compiled
  _check_size(args, settings.estimated_bytes(), settings.estimated_seconds(), "depth sweep",
              "--max-depth, --width, --seeds or the number of --sigma-w/--sigma-b values")
  with progress_bar(args, len(groups) + 1, "depth sweep") as advance:
    result = _sweep.run_sweep(settings, on_group=advance)
    curves = _sweep.layer_curves(settings)
    advance("per-layer Jacobians")
  points = result["points"]
  if not args.quiet and not args.json:
    from gradflow_jax.render import _render
    console.print(_render.depth_table(points))
  plots = {"depth_sweep.png": lambda p: _depth_plots.plot_depth_sweep(points, p,
                                                                       result["settings"]),
           "layer_jacobians.png": lambda p: _depth_plots.plot_layer_jacobians(curves, p,
                                                                              result["settings"])}
  payload = {**result, "layer_jacobians": curves}
  _finish(args, console, _write_outputs(args, "depth", payload, plots))
  return 0


def _over_sizes(args, what: str, sizes, study):
  """``study(on_size)`` with a progress line as each size (in increasing
  order) starts; a user model's errors become one line."""
  order = sorted(sizes)
  following = {v: order[i + 1] for i, v in enumerate(order[:-1])}
  with progress_bar(args, len(order), f"{what} study {args.model}") as advance, _model_errors():
    advance(f"{what} {order[0]}")
    return study(lambda v: v in following and advance(f"{what} {following[v]}"))


def _check_family_size(args, factory, key, sizes, seeds, examples, passes, held, fixed, lower):
  """The size guard of a family study: the factory built at two small sizes,
  its parameters, tapped values and taps extrapolated to ``sizes``."""
  from gradflow_jax.studies import _family
  with _model_errors():
    probe = _family.size_probe(factory, key, examples, args.output, **fixed)
  need, seconds = _family.estimated_cost(probe, sizes, seeds, passes, held)
  _check_size(args, need, seconds, f"{key} study", lower)


def depth_study(args) -> int:
  """``depth --model``: a family measured at each --depths, every seed."""
  from gradflow_jax.models import _loading
  from gradflow_jax.render import _model_plots, _render, _report
  from gradflow_jax.studies import _depth_study
  _refuse(args, _SWEEP_ONLY + ("x64",), "only for the built-in MLP sweep (a --model "
          "family sets its own architecture)")
  settings = _depth_study.DepthStudySettings(
      depths=args.depths or _depth_study.DEFAULT_DEPTHS, seeds=args.seeds, width=args.width,
      examples=args.examples or 4, loss=args.loss or "cross_entropy", seed=args.seed)
  console = _console(args)
  factory = _loading.load_factory(args.model)
  _check_family_size(args, factory, "depth", settings.depths, settings.seeds, settings.examples,
                     400, 40, {} if settings.width is None else {"width": settings.width},
                     "--depths, --seeds or --examples")
  result = _over_sizes(args, "depth", settings.depths, lambda on: _depth_study.depth_study(
      factory, settings, output=args.output, on_depth=on))
  if not args.quiet and not args.json:
    console.print(_render.depth_study_table(result))
  if result["input_nonfinite"]:
    print(f"note: the factory's batch holds {result['input_nonfinite']} non-finite values (the "
          "loss and gradients are NaN)", file=sys.stderr)
  label = args.model

  def report(pngs):
    path = os.path.join(args.out, "report.html")
    table = _report.table_html(list(_render.DEPTH_STUDY_COLUMNS),
                               _render.depth_study_rows(result))
    _report.write_report(path, f"gradflow_jax: depth study of {label}", [],
                         [("By depth", table)], pngs, notes=_render.depth_study_note(result))
    return path
  payload = {"model": label, **result}
  written = _write_outputs(args, "depth", payload, {
      "depth_study.png": lambda p: _model_plots.plot_depth_study(result, label, p),
      "depth_layer_heatmap.png": lambda p: _model_plots.plot_depth_layer_heatmap(result, label, p)},
      after_plots=report)
  _finish(args, console, written)
  return 0


def width(args) -> int:
  """``width --model``: the coordinate check across --widths."""
  from gradflow_jax.models import _loading
  from gradflow_jax.render import _model_plots, _render, _report
  from gradflow_jax.studies import _width_study
  settings = _width_study.WidthStudySettings(
      widths=args.widths, seeds=args.seeds, depth=args.depth, steps=args.steps,
      optimizer=args.optimizer, lr=args.lr, loss=args.loss, seed=args.seed)
  console = _console(args)
  factory = _loading.load_factory(args.model)
  fixed = {} if settings.depth is None else {"depth": settings.depth}
  _check_family_size(args, factory, "width", settings.widths, settings.seeds, settings.examples,
                     10 * settings.steps, 10, fixed, "--widths, --seeds or --steps")
  result = _over_sizes(args, "width", settings.widths, lambda on: _width_study.width_study(
      factory, settings, output=args.output, on_width=on))
  if not args.quiet and not args.json:
    console.print(_render.width_study_table(result))
  label = args.model

  def report(pngs):
    path = os.path.join(args.out, "report.html")
    _report.write_report(path, f"gradflow_jax: width study of {label}", [], [], pngs,
                         notes=f"{settings.steps} {settings.optimizer} steps at lr {settings.lr} "
                               f"on the factory's batch; {settings.seeds} seeds per width.")
    return path
  written = _write_outputs(args, "width", {"model": label, **result}, {
      "coordinate_check.png": lambda p: _model_plots.plot_coordinate_check(result, label, p)},
      after_plots=report)
  _finish(args, console, written)
  return 0


def rnn(args) -> int:
  from gradflow_jax.models import _rnn
  from gradflow_jax.studies import _rnn_sweep
  from gradflow_jax.render import _depth_plots
  console = _console(args)
  cfg = _rnn.RNNConfig(in_dim=args.in_dim, hidden=args.hidden, activation=args.activation,
                       init=args.init, scale_kind=args.scale_kind)
  if any(not s > 0 for s in args.scales):
    raise ValueError(f"expected scales > 0, got {list(args.scales)}")
  if args.steps < 2:
    raise ValueError(f"expected --steps >= 2, got {args.steps}")
  _check_size(args, _rnn_sweep.estimated_bytes(args.hidden, args.steps, args.batch_size),
              _rnn_sweep.estimated_seconds(args.hidden, args.steps, args.batch_size,
                                           len(args.scales)),
              "RNN sweep", "--hidden, --steps, --batch-size or the number of --scales")
  with progress_bar(args, len(args.scales), "rnn") as advance:
    runs = _rnn_sweep.run_rnn_sweep(cfg, args.scales, args.steps, args.batch_size, args.seed,
                              on_run=advance)
  if not args.quiet and not args.json:
    from gradflow_jax.render import _render
    console.print(_render.rnn_table(runs))
  payload = {"settings": {"activation": cfg.activation, "init": cfg.init, "hidden": cfg.hidden,
                          "in_dim": cfg.in_dim, "steps": args.steps, "batch": args.batch_size,
                          "scale_kind": cfg.scale_kind, "seed": args.seed},
             "runs": runs}
  plots = {"rnn_through_time.png": lambda p: _depth_plots.plot_rnn_through_time(
      runs, p, payload["settings"])}
  _finish(args, console, _write_outputs(args, "rnn", payload, plots))
  return 0


def _nonfinite_message(r: dict, on_nonfinite: str) -> str:
  """One line on where NaN/Inf first appeared in a run and what the guard did."""
  where = []
  if r["first_bad_layer"] is not None:
    where.append(f"first hidden layer with NaN/Inf activations: {r['first_bad_layer']}")
  if r["first_bad_dense_layer"] is not None:
    where.append(f"first dense layer with NaN/Inf gradients: {r['first_bad_dense_layer']}")
  where = f" ({'; '.join(where)})" if where else " (in the loss only)"
  if on_nonfinite == "stop":
    done = "the run stopped and kept the parameters from before that step"
  else:
    skipped = int(np.sum(r["logs"]["nonfinite"]))
    done = f"{skipped} of {r['steps_run']} steps skipped (their updates not applied)"
  return (f"[bold red]{r['label']}: loss or gradients NaN/Inf first at step {r['stopped_at']}[/]"
          f"{where}; {done}")


def train(args) -> int:
  from gradflow_jax import _io
  from gradflow_jax.render import _plots, _render
  from gradflow_jax.studies import _experiments, _train
  if args.model:
    return train_model(args)
  given = [f"--{k.replace('_', '-')}" for k in ("every", "watch", "window", "tensorboard",
                                                   "output")
           if getattr(args, k) is not None]
  if given:
    raise ValueError(f"expected {', '.join(given)} only with --model")
  if args.experiment == "edge-of-stability":
    from gradflow_jax.cli import _experiment_commands
    return _experiment_commands.edge_of_stability(args)
  activation = args.activation[-1] if args.activation else None
  if args.activation and (len(args.activation) > 1 or "=" in activation):
    raise ValueError("expected one --activation NAME for the built-in MLP (TAP=NAME is for "
                     f"--model), got {args.activation}")
  console = _console(args)
  data = _load_data(args.data or "digits", args.seed)
  overrides = dict(depth=args.depth, width=args.width, activation=activation,
                   optimizer=args.optimizer, lr=args.lr, steps=args.steps, clip=args.clip,
                   batch_size=args.batch_size, eval_every=args.eval_every, seed=args.seed)
  runs = _experiments.experiment_runs(args.experiment, data.x_train.shape[1], data.classes,
                                      overrides)
  runs = [(label, cfg, _train.TrainConfig(**{**tc.__dict__, "on_nonfinite": args.on_nonfinite}))
          for label, cfg, tc in runs]
  for _, cfg, tc in runs:  # every bad setting is reported before anything compiles
    _train.check_data(cfg, tc, data)
  _check_size(args, max(_train.estimated_bytes(cfg, tc, data) for _, cfg, tc in runs),
              sum(_train.estimated_seconds(cfg, tc) for _, cfg, tc in runs), "training",
              "--steps, --width, --depth or --batch-size")
  os.makedirs(args.out, exist_ok=True)
  records = []
  meta = {"experiment": args.experiment, "data": data.name, "n_train": len(data.x_train),
          "n_test": len(data.x_test)}

  def save(partial: bool):
    payload = {**meta, "complete": not partial,
               "runs": [{k: v for k, v in r.items() if k != "logs"} for r in records]}
    _io.write_json(os.path.join(args.out, "results.json"), {"command": "train", **_versions(),
                                                            **payload})
    for i, r in enumerate(records):
      _io.save_npz(os.path.join(args.out, f"steps_{i}_{_slug(r['label'])}.npz"), r["logs"])

  total = sum(tc.steps for _, _, tc in runs)
  pconsole = Console(stderr=True, quiet=args.quiet or args.json)
  with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"), TimeElapsedColumn(),
                console=pconsole, transient=True, disable=not pconsole.is_terminal) as prog:
    task = prog.add_task(f"train {args.experiment}", total=total)
    offset = 0
    for label, cfg, tc in runs:
      prog.update(task, description=f"train {args.experiment}: {label}")
      records.append(None)

      def on_chunk(done, result, label=label, cfg=cfg, tc=tc, offset=offset):
        records[-1] = result.as_record(label, cfg, tc)
        prog.update(task, completed=offset + done)
        save(partial=True)
        if not pconsole.is_terminal and not pconsole.quiet:  # a log: a plain line a chunk
          print(f"train {args.experiment}: {label}: step {done}/{tc.steps} "
                f"({offset + done}/{total} in all)", file=sys.stderr, flush=True)

      _train.train(cfg, tc, data, on_chunk=on_chunk)
      offset += tc.steps
  if not args.quiet and not args.json:
    console.print(_render.train_table(records))
    for r, (_, _, tc) in zip(records, runs):
      if r["stopped_at"] is not None:
        console.print(_nonfinite_message(r, tc.on_nonfinite))
  save(partial=False)
  drawn, _ = _draw_plots(args, {
      "training_curves.png": lambda p: _plots.plot_training(records, p),
      "grad_heatmap.png": lambda p: _plots.plot_grad_heatmap(records, p),
      "activation_fractions.png": lambda p: _plots.plot_fractions(records, p)})
  _finish(args, console, [os.path.join(args.out, "results.json")] + drawn)
  return 0

