"""The parser of ``analyze.py curvature --model file.py:make``: the Hessian of
a model's loss on its data (top eigenvalues, SLQ density, trace, per-leaf
block sharpness)."""

from __future__ import annotations

from gradflow_jax.cli._args import _positive_float, _positive_int


def add_parser(sub, add_common) -> None:
  """Adds ``curvature`` to the subparsers ``sub`` (``add_common``: the
  options every command takes, from ``_cli``)."""
  p = sub.add_parser("curvature", help="the Hessian of your model's loss: top eigenvalues, "
                     "eigenvalue density (SLQ), trace and per-leaf sharpness")
  p.add_argument("--model", required=True,
                 help="path/to/file.py:factory, a function returning (model, params, (x, y)) "
                      "(as for diagnose)")
  p.add_argument("--examples", type=_positive_int, default=256,
                 help="the first N training examples the loss is averaged over (default 256)")
  p.add_argument("--probes", type=_positive_int, default=8,
                 help="random probes of the density and trace (default 8)")
  p.add_argument("--lanczos-steps", type=_positive_int, default=32, metavar="N",
                 help="Lanczos steps (Hessian-vector products) per probe and per leaf "
                      "(default 32)")
  p.add_argument("--top", type=_positive_int, default=5,
                 help="how many of the largest eigenvalues (default 5; at most --lanczos-steps)")
  p.add_argument("--lr", type=_positive_float,
                 help="a learning rate: report its stability thresholds 2/lr (GD) and 38/lr "
                      "(Adam, for the preconditioned Hessian) beside the eigenvalues")
  p.add_argument("--data", default=None,
                 help="digits, teacher or a .npz with x_train,y_train,x_test,y_test (default: "
                      "the factory's extras['data'], else digits for 64-feature vector "
                      "inputs, else the factory's batch)")
  p.add_argument("--loss", choices=["cross_entropy", "mse"],
                 help="default: the factory's extras['loss'] where it has one, else "
                      "cross_entropy")
  p.add_argument("--output", help="key or index of the model output the loss uses "
                                  "(tuple/dict outputs; default: first / 'logits')")
  p.add_argument("--no-plots", action="store_true", help="write results.json only")
  p.add_argument("--force", action="store_true",
                 help="run even when the memory or time estimate says it will not fit")
  add_common(p, "gradflow_out/curvature")
  p.set_defaults(run=_run)


def _run(args) -> int:
  from gradflow_jax.cli import _curvature_commands
  return _curvature_commands.curvature(args)
