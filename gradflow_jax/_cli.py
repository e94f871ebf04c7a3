"""Command line: parses arguments and calls the library. Computes nothing.

``python scripts/analyze.py [SUBCOMMAND] [OPTIONS]``; without a subcommand it
runs ``compare``.
"""

from __future__ import annotations

import argparse
import os
import sys

SUBCOMMANDS = {}


class _Parser(argparse.ArgumentParser):
  """Bad arguments: one line on stderr, exit status 2, no usage dump."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _csv(text: str) -> tuple[str, ...]:
  items = tuple(s.strip() for s in text.split(",") if s.strip())
  if not items:
    raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
  return items


def _positive_int(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if v <= 0:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
  return v


def _nonneg_float(text: str) -> float:
  try:
    v = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if not v >= 0 or v == float("inf"):
    raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
  return v


def add_common(p: argparse.ArgumentParser, out_default: str) -> None:
  p.add_argument("--out", default=out_default, help=f"output folder (default {out_default})")
  p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  p.add_argument("--quiet", action="store_true", help="no tables or progress; print only paths")
  p.add_argument("--json", action="store_true",
                 help="print results.json to stdout instead of tables")


def _compare_parser(sub) -> None:
  from gradflow_jax import _compare
  p = sub.add_parser("compare", help="activations x initializers at init (the default)")
  p.add_argument("--depth", type=_positive_int, default=10, help="hidden layers (default 10)")
  p.add_argument("--width", type=_positive_int, default=256, help="hidden units (default 256)")
  p.add_argument("--batch-size", type=_positive_int, default=64, help="examples (default 64)")
  p.add_argument("--in-dim", type=_positive_int, default=128, help="input dimension (default 128)")
  p.add_argument("--classes", type=_positive_int, default=10, help="output dimension (default 10)")
  p.add_argument("--activations", type=_csv, default=_compare.DEFAULT_ACTIVATIONS,
                 help="comma-separated (default " + ",".join(_compare.DEFAULT_ACTIVATIONS) + ")")
  p.add_argument("--init", default="torch_default",
                 help="shared initializer run beside each recommended one, or 'none' "
                      "(default torch_default, what nn.Linear draws)")
  p.add_argument("--norm", default="none", choices=["none", "layernorm", "batchnorm"])
  p.add_argument("--residual", action="store_true", help="residual blocks x + f(x)")
  p.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "mse"])
  p.add_argument("--sigma-b", type=_nonneg_float, default=0.0, help="bias std (default 0)")
  p.add_argument("--weights", help=".npz of weights w0,b0,w1,b1,... (fan_in, fan_out)")
  p.add_argument("--inputs", help=".npy of inputs (batch, in_dim)")
  p.add_argument("--no-plots", action="store_true", help="write results.json only")
  add_common(p, "gradflow_out")
  p.set_defaults(run=lambda args: _commands().compare(args))


def _commands():
  from gradflow_jax import _commands
  return _commands


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="analyze.py", description=(
      "Measure gradient flow: activation statistics, saturation, dead units and "
      "gradient norms per layer. Without a subcommand, runs 'compare'."))
  sub = parser.add_subparsers(dest="command", parser_class=_Parser)
  _compare_parser(sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  commands = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001
  if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help")):
    argv = ["compare"] + argv
  args = parser.parse_args(argv)
  try:
    return int(args.run(args) or 0)
  except (ValueError, TypeError, OSError) as e:
    msg = " ".join(str(e).split())
    print(f"analyze.py {args.command}: error: {msg}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("analyze.py: interrupted; files written so far are complete", file=sys.stderr)
    return 130


if __name__ == "__main__":
  os._exit(main())
