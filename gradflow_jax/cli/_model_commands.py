"""The CLI subcommands on users' models (``--model file.py:make``): diagnose
(and report) and train."""

from __future__ import annotations

import contextlib
import itertools
import json
import os

import numpy as np

from gradflow_jax.cli import _sizes
from gradflow_jax.cli._output import _console, _finish, _load_data, _write_outputs, progress_bar

# options of the built-in MLP that a --model run refuses
_MLP_ONLY = ("depth", "width", "eval_every")


def _model_loss(args, extras: dict):
  """--loss when given, else the factory's own loss, else cross-entropy."""
  return args.loss or extras.get("loss") or "cross_entropy"


def _loss_name(args, extras: dict) -> str:
  loss = _model_loss(args, extras)
  return loss if isinstance(loss, str) else "the factory's loss"


def _classes(labels: np.ndarray) -> int:
  """Number of classes of integer labels (max + 1); 0 for other targets."""
  return int(labels.max()) + 1 if np.issubdtype(labels.dtype, np.integer) else 0


def _model_data(args, x, y, factory_data=None):
  """The training data of a --model run: --data; else the factory's own
  extras['data']; else digits for 64-feature vector inputs; else the
  factory's batch (train and test)."""
  from gradflow_jax import _data
  x_np = np.asarray(x) if hasattr(x, "shape") else None
  if args.data:
    data = _load_data(args.data, args.seed)
  elif factory_data is not None:
    x_train, y_train, x_test, y_test = factory_data
    data = _data.Dataset(x_train, y_train, x_test, y_test,
                         _classes(np.concatenate([y_train.ravel(), y_test.ravel()])),
                         f"the factory's data ({len(x_train)} train, {len(x_test)} test)")
  elif x_np is not None and x_np.ndim == 2 and x_np.shape[1] == 64 and np.issubdtype(
      x_np.dtype, np.floating):
    data = _data.load_digits(args.seed)
  else:
    if x_np is None:
      raise ValueError("expected the factory's x to be an array to train on (or pass --data)")
    y_np = np.asarray(y)
    _data.check_finite_examples(x_np, "x", "the factory's batch (training data)")
    return _data.Dataset(x_np, y_np, x_np, y_np, _classes(y_np),
                         f"the factory's batch ({len(x_np)})")
  if x_np is not None and data.x_train.shape[1:] != x_np.shape[1:]:
    raise ValueError(f"expected the training inputs shaped like the factory's batch "
                     f"{tuple(x_np.shape[1:])}, got {tuple(data.x_train.shape[1:])}")
  return data


def _checked_batches(batches):
  """The factory's training batches, each refused (one line, exit 2) when it
  is not an (x, y) pair or its inputs hold NaN/Inf."""
  from gradflow_jax import _data
  for i, batch in enumerate(iter(batches)):
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
      raise ValueError(f"expected the factory's batches to yield (x, y) pairs, got a "
                       f"{type(batch).__name__} at batch {i}")
    _data.check_finite_examples(np.asarray(batch[0]), "x", f"the factory's batch {i}")
    yield batch


def train_model(args) -> int:
  """``train --model``: a user's model trained with the monitored step,
  logged every --every steps (JSON Lines, optionally TensorBoard), with
  plots, findings over the last --window logged steps and a report."""
  import dataclasses
  import jax.numpy as jnp
  from gradflow_jax.measure import _model_stats
  from gradflow_jax.models import _activations, _flax, _loading
  from gradflow_jax.render import _model_training_plots, _render, _report
  from gradflow_jax.studies import _model_cost, _model_findings, _model_train
  from gradflow_jax.watch import _writers
  given = [f"--{k.replace('_', '-')}" for k in _MLP_ONLY if getattr(args, k, None) is not None]
  if given:
    raise ValueError(f"expected {', '.join(given)} only for the built-in MLP (a --model sets "
                     "its own architecture)")
  every, log_every = args.every or (None, ())
  tc = _model_train.ModelTrainConfig(
      optimizer=args.optimizer or "adam", lr=args.lr or 1e-3, clip=args.clip,
      steps=args.steps or 200, batch_size=args.batch_size or 64, every=every or 10,
      window=args.window or 5, seed=args.seed, on_nonfinite=args.on_nonfinite,
      watch=args.watch, log_every=log_every)
  console = _console(args)
  factory = _loading.load_factory(args.model)
  model, params, (x, y), extras = _loading.call_factory(factory)
  probed = _flax.as_probed(model, params, output=args.output)
  named = parse_activations(args.activation)
  data = _model_data(args, x, y, extras.get("data"))
  with _model_errors():
    for act in named.values():
      _activations.get_activation(act)
    probed = probed.with_activations(named)
    _, shapes = _model_stats.discover(probed, jnp.asarray(data.x_train[:2]))
  examples = len(data.x_train[:2])
  _sizes.check_size(
      args, _model_cost.estimated_bytes(probed.params, shapes, examples, tc, data),
      _model_cost.estimated_seconds(probed.params, shapes, examples, tc, data), "training",
      "--steps or --batch-size (or the factory's model and data)")
  loss = _model_stats.loss_fn(_model_loss(args, extras))
  batches = extras.get("batches")
  if batches is not None:  # the first batch is checked before anything is written
    batches = _checked_batches(batches(args.seed) if callable(batches) else batches)
    first = next(batches, None)
    if first is None:
      raise ValueError("expected the factory's batches to yield (x, y) pairs, got none")
    batches = itertools.chain([first], batches)
    data = data._replace(name=f"the factory's batches (test: {data.name})")
  writers = [_writers.JsonlWriter(os.path.join(args.out, "log.jsonl"))]
  if args.tensorboard:
    writers.append(_writers.TensorBoardWriter(args.tensorboard))
  try:
    with progress_bar(args, tc.steps // tc.every + 1, f"train {args.model}") as advance, \
        _model_errors():
      result = _model_train.train_model(probed, data, loss, tc, writers,
                                        on_log=lambda i: advance(f"step {i}/{tc.steps}"),
                                        batches=batches)
  finally:
    for w in writers:
      w.close()
  findings = _model_findings.window_findings(result, tc.window)
  label = args.model
  if not args.quiet and not args.json:
    console.print(_render.model_train_table(
        result, f"{data.name} ({_loss_name(args, extras)})"))
    _render.print_findings(console, [{"label": label, "findings": findings}])
    if not findings:
      console.print("[green]no warnings[/]")
  payload = {"model": args.model, "data": data.name, "settings": dataclasses.asdict(tc),
             "loss_name": _loss_name(args, extras), **result.as_dict(),
             "findings": [f._asdict() for f in findings]}

  def report(pngs):
    path = os.path.join(args.out, "report.html")
    _report.write_report(path, f"gradflow_jax: training {label}", [(label, findings)],
                         _report.model_train_tables(payload),
                         [p for p in pngs if p.endswith(".png")],
                         notes=f"{len(result.losses)} steps on {data.name}, logged every "
                               f"{tc.every}; test accuracy "
                               f"{_report.test_accuracy_text(payload)}; findings hold on each "
                               f"of the last {tc.window} logged steps.")
    return path
  from gradflow_jax.render import _dashboard
  dashboard = ({"dashboard.png": lambda p: _dashboard.plot_dashboard(payload, p)}
               if "norms" in result.tiers else {})
  written = _write_outputs(args, "train", payload, {
      **dashboard,
      "training_curves.png": lambda p: _model_training_plots.plot_model_training(payload, p),
      "tap_grad_heatmap.png": lambda p: _model_training_plots.plot_tap_heatmap(payload, p),
      "update_ratios.png": lambda p: _model_training_plots.plot_update_ratios(payload, p),
      "activation_histograms.png": lambda p: _model_training_plots.plot_histograms_over_steps(
          _model_findings.histogram_series(result, "act"), result.steps, "Tap values", p),
      "gradient_histograms.png": lambda p: _model_training_plots.plot_histograms_over_steps(
          _model_findings.histogram_series(result, "grad"), result.steps, "dL/d tap", p)},
      extra=[os.path.join(args.out, "log.jsonl")], after_plots=report)
  fired = (result.recorder_summary() or {}).get("fired_step")
  if fired is not None:  # what the flight recorder held when its trigger fired
    from gradflow_jax.render import _forensics_plots
    paths = _forensics_plots.write_forensics(args.out, result.recorder, result.params_names,
                                             plot=not args.no_plots)
    written += paths
    if not args.quiet and not args.json:
      with open(paths[0]) as f:
        verdict = json.load(f)["verdict"]["text"]
      console.print(f"flight recorder fired at step {fired}: {verdict}")
  _finish(args, console, written)
  return 0


def parse_activations(items) -> dict[str, str]:
  """``["TAP=relu", ...]`` -> {tap: activation}."""
  out = {}
  for item in items or ():
    tap, sep, act = item.partition("=")
    if not sep or not tap or not act:
      raise ValueError(f"expected --activation TAP=NAME (e.g. Dense_0=relu), got {item!r}")
    out[tap] = act
  return out


@contextlib.contextmanager
def _model_errors():
  """What a user's model raises on a batch or params it cannot take, as the
  one-line ValueError the CLI reports."""
  from flax.errors import FlaxError
  try:
    yield
  except (TypeError, AttributeError, IndexError, KeyError, FlaxError) as e:
    raise ValueError(f"expected the model to run on the factory's batch with its params, "
                     f"got {type(e).__name__}: {e}") from None


def diagnose(args) -> int:
  """Any model from a factory: measured once, then table, findings, plot,
  report and results.json from the same measurements."""
  from gradflow_jax.measure import _model_stats
  from gradflow_jax.models import _activations, _flax, _loading
  from gradflow_jax.render import _model_plots, _render, _report
  from gradflow_jax.studies import _analyze
  console = _console(args)
  factory = _loading.load_factory(args.model)
  model, params, (x, y), extras = _loading.call_factory(factory)
  probed = _flax.as_probed(model, params, output=args.output)
  named = parse_activations(args.activation)
  with _model_errors():  # traced before any progress line: a model that cannot run is one line
    for act in named.values():
      _activations.get_activation(act)
    _model_stats.discover(probed.with_activations(named), x)
  with progress_bar(args, 1, "diagnose") as advance, _model_errors():
    advance("statistics, Jacobians and findings")
    result = _analyze.analyze_model(probed, x, y, _model_loss(args, extras), named,
                                    jacobian_steps=getattr(args, "jacobian_steps", 32))
  stats, jac = result.stats, result.jacobians
  findings = result.findings
  if not args.quiet and not args.json:
    console.print(_render.taps_table(stats, jac))
    _render.print_findings(console, [{"label": args.model, "findings": findings}])
    if not findings:
      console.print("[green]no warnings[/]")

  def report(pngs):
    path = os.path.join(args.out, "report.html")
    _report.write_report(path, f"gradflow_jax: {args.model}", [(args.model, findings)],
                         [("Taps", _report.taps_html(stats, jac))], pngs)
    return path
  payload = {"model": args.model, **result.as_dict()}
  written = _write_outputs(args, "diagnose", payload,
                           {"model_taps.png": lambda p: _model_plots.plot_taps(stats, jac, p)},
                           after_plots=report)
  _finish(args, console, written)
  return 0


def forensics(args) -> int:
  """``forensics RUN_DIR``: forensics.png redrawn from RUN_DIR/forensics.json
  (with ``--sigmas``, the window analysed again first); the verdict and the
  first movers printed."""
  from gradflow_jax.render import _forensics_plots
  from gradflow_jax.watch import _forensics
  source = os.path.join(args.run_dir, "forensics.json")
  try:
    with open(source) as f:
      report = json.load(f)
    if args.sigmas is not None:
      report = _forensics.analyse_window(*_forensics.window_of_report(report), args.sigmas)
  except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"expected a readable forensics.json (gf.write_forensics) in "
                     f"{args.run_dir!r}, got {type(e).__name__}: {e}") from None
  written = []
  if args.sigmas is not None or os.path.abspath(args.out) != os.path.abspath(args.run_dir):
    from gradflow_jax import _io
    report.pop("schema_version", None)
    written.append(os.path.join(args.out, "forensics.json"))
    _io.write_json(written[-1], report)
  written.append(os.path.join(args.out, "forensics.png"))
  _forensics_plots.plot_forensics(report, written[-1])
  if args.json:
    from gradflow_jax import _io
    print(json.dumps(_io.to_jsonable(report), allow_nan=False))
    return 0
  if not args.quiet:
    step = report["trigger"]["step"]
    print(f"trigger: {', '.join(report['trigger']['reasons']) or 'none'}"
          f"{'' if step is None else f' at step {step}'}")
    print(f"verdict: {report['verdict']['text']}")
    first = sorted(report["leaves"], key=lambda leaf: report["ranking"].index(leaf["name"]))[:8]
    for leaf in first:
      onset = "-" if leaf["onset_step"] is None else leaf["onset_step"]
      print(f"  {leaf['name']:<40} onset {onset!s:>6}  {leaf['left_by'] or '-'}")
  _finish(args, _console(args), written)
  return 0
