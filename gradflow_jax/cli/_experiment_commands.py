"""``train --experiment edge-of-stability``: full-batch gradient descent at
three learning rates, sharpness against 2 / lr (results.json,
edge_of_stability.png and a table)."""

from __future__ import annotations

from gradflow_jax.cli import _sizes
from gradflow_jax.cli._output import _console, _finish, _load_data, _write_outputs, progress_bar

# options of the other experiments this one does not take
_NOT_HERE = ("optimizer", "clip", "batch_size", "eval_every", "lr")
# measured on this 2-core CPU: 1500 steps x 3 learning rates of the default
# 64 x 64 network (8.8k weights) on 1000 examples, sharpness every 10 steps,
# took about 40 s: 1e-9 s per step, example and weight
SECONDS_PER_STEP_EXAMPLE_WEIGHT = 1e-9


def edge_of_stability(args) -> int:
  from rich.table import Table
  from gradflow_jax.render import _eos_plots
  from gradflow_jax.studies import _edge_of_stability as eos
  given = [f"--{k.replace('_', '-')}" for k in _NOT_HERE if getattr(args, k, None) is not None]
  if given:
    raise ValueError(f"expected no {', '.join(given)} with --experiment edge-of-stability "
                     "(full-batch gradient descent at lr "
                     f"{', '.join(map(str, eos.EdgeConfig.lrs))})")
  activation = args.activation[-1] if args.activation else "tanh"
  config = eos.EdgeConfig(steps=args.steps or 1500, width=args.width or 64,
                          depth=args.depth or 2, activation=activation, seed=args.seed)
  data = _load_data(args.data or "digits", args.seed)
  n = min(config.examples, len(data.x_train))
  weights = config.width * (data.x_train.shape[1] + config.width * (config.depth - 1)
                            + data.classes)
  # the batch's activations and their tangents, the Lanczos basis
  _sizes.check_size(args, 4 * (6 * n * (data.x_train.shape[1] + config.width * config.depth)
                               + weights * (config.lanczos_steps + 8)),
                    5 + len(config.lrs) * config.steps * n * weights
                    * SECONDS_PER_STEP_EXAMPLE_WEIGHT, "training", "--steps, --width or --depth")
  console = _console(args)
  total = len(config.lrs) * config.steps
  with progress_bar(args, -(-total // eos.CHUNK), "edge-of-stability") as advance:
    result = eos.edge_of_stability(
        data, config, on_chunk=lambda r, done: advance(f"lr {config.lrs[r]:g}: step {done}"))
  if not args.quiet and not args.json:
    table = Table(title=f"Full-batch gradient descent on {n} {data.name} examples "
                        "(mean squared error)")
    for col in ("lr", "2 / lr", "sharpness, last quarter (median)", "loss rose on",
                "final loss"):
      table.add_column(col, justify="right")
    for run in result["runs"]:
      edge = run["edge_sharpness"]
      table.add_row(f"{run['lr']:g}", f"{run['threshold']:.3g}",
                    "not converged" if edge is None else f"{edge:.3g}",
                    f"{run['loss_increases']} of {len(run['loss']) - 1} steps",
                    f"{run['final_loss']:.4g}")
    console.print(table)
  written = _write_outputs(args, "train", {"experiment": "edge-of-stability",
                                           "data": data.name, **result},
                           {"edge_of_stability.png":
                            lambda p: _eos_plots.plot_edge_of_stability(result, p)})
  _finish(args, console, written)
  return 0
