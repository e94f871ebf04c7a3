"""``analyze.py curvature --model file.py:make``: the Hessian of a model's
loss on the first ``--examples`` training examples, measured by
``studies/_curvature``, printed, written to results.json and drawn."""

from __future__ import annotations

from gradflow_jax.cli import _sizes
from gradflow_jax.cli._model_commands import _loss_name, _model_data, _model_errors, _model_loss
from gradflow_jax.cli._output import _console, _finish, _write_outputs, progress_bar


def curvature(args) -> int:
  """Measures, prints the top eigenvalues, trace and sharpest leaves, writes
  results.json and hessian_spectrum.png."""
  from gradflow_jax.measure import _model_stats
  from gradflow_jax.models import _flax, _loading
  from gradflow_jax.render import _curvature_plots
  from gradflow_jax.studies import _curvature
  if args.top > args.lanczos_steps:
    raise ValueError(f"expected --top <= --lanczos-steps (each probe's Krylov space holds "
                     f"--lanczos-steps directions), got --top {args.top} and --lanczos-steps "
                     f"{args.lanczos_steps}")
  console = _console(args)
  factory = _loading.load_factory(args.model)
  model, params, (x, y), extras = _loading.call_factory(factory)
  probed = _flax.as_probed(model, params, output=args.output)
  data = _model_data(args, x, y, extras.get("data"))
  xs, ys = data.x_train[:args.examples], data.y_train[:args.examples]
  settings = _curvature.CurvatureSettings(
      examples=len(xs), probes=args.probes, lanczos_steps=args.lanczos_steps, top=args.top,
      seed=args.seed, lr=args.lr)
  loss = _model_stats.loss_fn(_model_loss(args, extras))
  with _model_errors():  # a model that cannot take the data is one line, before any work
    need, seconds = _curvature.estimated_cost(probed, xs, ys, loss, settings)
  _sizes.check_size(args, need, seconds, "curvature measurement",
                    _sizes.SIZE_OPTIONS["curvature"])
  with progress_bar(args, 1, f"curvature {args.model}") as advance, _model_errors():
    advance("Hessian spectrum and block sharpness")
    result = _curvature.curvature_study(probed, xs, ys, loss, settings)
  payload = {"model": args.model, "data": data.name, "loss_name": _loss_name(args, extras),
             **result}
  if not args.quiet and not args.json:
    for table in _curvature_plots.curvature_tables(payload):
      console.print(table)
  written = _write_outputs(args, "curvature", payload, {
      "hessian_spectrum.png": lambda p: _curvature_plots.plot_hessian_spectrum(payload, p)})
  _finish(args, console, written)
  return 0
