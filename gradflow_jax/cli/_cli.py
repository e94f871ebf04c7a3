"""Command line: parses arguments and calls the library. Computes nothing.

``python scripts/analyze.py [SUBCOMMAND] [OPTIONS]``; without a subcommand it
runs ``compare``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from gradflow_jax.cli import _curvature_parser, _sizes
from gradflow_jax.cli._args import (_csv, _every, _floats, _gains, _nonneg_float,
                                    _positive_float, _positive_floats, _positive_int,
                                    _positive_ints, _seed, _watch)

SUBCOMMANDS = {}


class _Parser(argparse.ArgumentParser):
  """Bad arguments: one line on stderr, exit status 2, no usage dump."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def add_common(p: argparse.ArgumentParser, out_default: str) -> None:
  p.add_argument("--out", default=out_default, help=f"output folder (default {out_default})")
  p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
  p.add_argument("--quiet", action="store_true", help="no tables or progress; print only paths")
  p.add_argument("--json", action="store_true",
                 help="print results.json to stdout instead of tables")


_LOSS_HELP = ("default: a --model factory's own extras['loss'] where it has one, else "
              "cross_entropy")


def _compare_options(p) -> None:
  """The options of ``compare`` (and of ``report``, which runs it)."""
  from gradflow_jax.studies import _compare
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
  p.add_argument("--loss", choices=["cross_entropy", "mse"], help=_LOSS_HELP)
  p.add_argument("--sigma-b", type=_nonneg_float, default=0.0, help="bias std (default 0)")
  p.add_argument("--weights", help=".npz of weights w0,b0,w1,b1,... (fan_in, fan_out)")
  p.add_argument("--inputs", help=".npy of inputs (batch, in_dim)")
  p.add_argument("--no-plots", action="store_true", help="write results.json only")
  p.add_argument("--force", action="store_true",
                 help="run even when the memory or time estimate says it will not fit")
  add_common(p, "gradflow_out")
  # the built-in MLP's options and their defaults: with --model, any other
  # value is refused, not ignored
  p.set_defaults(mlp_option_defaults={k: p.get_default(k) for k in (
      "depth", "width", "batch_size", "in_dim", "classes", "activations", "init", "norm",
      "residual", "sigma_b", "weights", "inputs")})


def _compare_parser(sub) -> None:
  p = sub.add_parser("compare", help="activations x initializers at init (the default)")
  _compare_options(p)
  p.add_argument("--report", action="store_true",
                 help="also diagnose every run and write report.html")
  p.set_defaults(run=lambda args: _commands().compare(args))


def _report_parser(sub) -> None:
  p = sub.add_parser("report", help="the default analysis with a diagnosis, as report.html")
  _compare_options(p)
  p.add_argument("--model", help="report on your own model instead: " + _MODEL_HELP)
  _model_options(p)
  p.set_defaults(run=lambda args: _commands().compare(args, force_report=True))


_MODEL_HELP = ("path/to/file.py:factory, a function returning (model, params, (x, y)); "
               "model: a Flax linen module (params: its variables), an NNX module (params: "
               "None) or a function f(params, x)")


def _model_options(p) -> None:
  p.add_argument("--activation", action="append", metavar="TAP=NAME",
                 help="the activation applied to a tap's output (repeatable), where it "
                      "cannot be read from the model, e.g. Dense_0=relu")
  p.add_argument("--output", help="key or index of the model output the loss uses "
                                  "(tuple/dict outputs; default: first / 'logits')")


def _diagnose_parser(sub) -> None:
  p = sub.add_parser("diagnose", help="diagnose your own model: --model file.py:factory")
  p.add_argument("--model", required=True, help=_MODEL_HELP)
  p.add_argument("--loss", choices=["cross_entropy", "mse"], help=_LOSS_HELP)
  _model_options(p)
  p.add_argument("--jacobian-steps", type=_positive_int, default=32, metavar="N",
                 help="Lanczos steps per local Jacobian norm (default: 32); raise it where "
                      "the diagnosis says norms did not converge")
  add_common(p, "gradflow_out/diagnose")
  p.set_defaults(run=lambda args: _commands().diagnose(args))


def _forensics_parser(sub) -> None:
  p = sub.add_parser("forensics", help="redraw a flight recorder's RUN_DIR/forensics.json "
                     "(gf.write_forensics), or re-read it with --sigmas: what moved first")
  p.add_argument("run_dir")
  p.add_argument("--sigmas", type=_positive_float, help="band half-width in standard deviations")
  add_common(p, None)  # --out: RUN_DIR
  p.set_defaults(run=lambda args: _commands().forensics(args))


def _depth_parser(sub) -> None:
  p = sub.add_parser("depth", help="Jacobian spectra across depth: the built-in MLP with "
                                    "mean-field theory, or your model family with --model")
  p.add_argument("--model", help="study your own family: path/to/file.py:factory, a function "
                                 "make(depth=, width=, key=) returning (model, params, (x, y))")
  p.add_argument("--depths", type=_positive_ints,
                 help="with --model: comma-separated depths (default 2,4,8,16,32)")
  p.add_argument("--examples", type=_positive_int,
                 help="with --model: examples of the factory's batch per seed (default 4)")
  p.add_argument("--loss", choices=["cross_entropy", "mse"], help="with --model "
                                                                  "(default cross_entropy)")
  p.add_argument("--output", help="with --model: key or index of the model output the loss uses")
  p.add_argument("--activations", type=_csv, help="comma-separated (default tanh,relu)")
  p.add_argument("--inits", type=_csv,
                 help="comma-separated initializers, 'auto' = recommended (default auto)")
  p.add_argument("--sigma-w", type=_gains,
                 help="comma-separated gains / mean-field sigma_w (default: the init's own)")
  p.add_argument("--sigma-b", type=_floats, help="comma-separated bias stds (default 0)")
  p.add_argument("--max-depth", type=_positive_int, help="deepest depth (default 200)")
  p.add_argument("--width", type=_positive_int,
                 help="width = input dim (default 64); with --model: passed to the factory")
  p.add_argument("--batch-size", type=_positive_int, help="inputs per seed (default 4)")
  p.add_argument("--seeds", type=_positive_int, default=4, help="random networks per point (default 4)")
  p.add_argument("--spectrum-depths", type=_positive_int,
                 help="log-spaced depths at which full spectra are computed (default 16)")
  p.add_argument("--x64", action="store_true", help="float64 (singular values below float32 resolution)")
  p.add_argument("--no-plots", action="store_true", help="write results.json only")
  p.add_argument("--force", action="store_true",
                 help="run even when the memory or time estimate exceeds what is allowed "
                      "(80%% of available memory, an hour)")
  add_common(p, "gradflow_out/depth")
  p.set_defaults(run=lambda args: _commands().depth(args))


def _width_parser(sub) -> None:
  p = sub.add_parser("width", help="coordinate check across width (muP-style) of your model "
                                    "family: --model file.py:factory")
  p.add_argument("--model", required=True,
                 help="path/to/file.py:factory, a function make(width=, depth=, key=) returning "
                      "(model, params, (x, y))")
  p.add_argument("--widths", type=_positive_ints, default=(64, 128, 256, 512, 1024),
                 help="comma-separated widths (default 64,128,256,512,1024)")
  p.add_argument("--depth", type=_positive_int, help="passed to the factory (default: its own)")
  p.add_argument("--seeds", type=_positive_int, default=2, help="networks per width (default 2)")
  p.add_argument("--steps", type=_positive_int, default=3,
                 help="optimizer steps after init (default 3)")
  p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
  p.add_argument("--lr", type=_positive_float, default=1e-2, help="learning rate (default 0.01)")
  p.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "mse"])
  p.add_argument("--output", help="key or index of the model output the loss uses")
  p.add_argument("--no-plots", action="store_true", help="write results.json only")
  p.add_argument("--force", action="store_true",
                 help="run even when the memory or time estimate says it will not fit")
  add_common(p, "gradflow_out/width")
  p.set_defaults(run=lambda args: _commands().width(args))


def _rnn_parser(sub) -> None:
  p = sub.add_parser("rnn", help="vanilla RNN: gradients through time against the scale of W")
  p.add_argument("--activation", default="tanh", choices=["tanh", "sigmoid"])
  p.add_argument("--init", default="orthogonal", help="initializer of W (default orthogonal)")
  p.add_argument("--scales", type=_positive_floats, default=(0.5, 0.8, 1.0, 1.2, 1.5, 2.0),
                 help="comma-separated scales of W (default 0.5,0.8,1,1.2,1.5,2)")
  p.add_argument("--scale-kind", default="spectral_norm", choices=["spectral_norm", "spectral_radius"])
  p.add_argument("--hidden", type=_positive_int, default=32, help="hidden units (default 32)")
  p.add_argument("--in-dim", type=_positive_int, default=4, help="input dimension (default 4)")
  p.add_argument("--steps", type=_positive_int, default=40, help="sequence length T (default 40)")
  p.add_argument("--batch-size", type=_positive_int, default=8, help="sequences (default 8)")
  p.add_argument("--force", action="store_true",
                 help="run even when the memory or time estimate says it will not fit")
  p.add_argument("--no-plots", action="store_true", help="write results.json only")
  add_common(p, "gradflow_out/rnn")
  p.set_defaults(run=lambda args: _commands().rnn(args))


def _train_parser(sub) -> None:
  from gradflow_jax.studies import _experiments, _train
  p = sub.add_parser("train", help="train with gradient-flow logging: the built-in MLP "
                                    "experiments, or your own model with --model")
  p.add_argument("--experiment", default="residual", choices=_experiments.EXPERIMENTS,
                 help="which comparison to run (default residual)")
  p.add_argument("--model", help="train your own model instead: " + _MODEL_HELP)
  p.add_argument("--data", default=None,
                 help="digits (default; with --model: the factory's extras['data'], else "
                      "digits for 64-feature vector inputs, else the factory's batch), "
                      "teacher, or a .npz with x_train,y_train,x_test,y_test")
  p.add_argument("--loss", choices=["cross_entropy", "mse"], help="with --model: " + _LOSS_HELP)
  p.add_argument("--watch", type=_watch, help="with --model: what to log, from norms (per "
                 "leaf, every step), flow (tap statistics), spectra (weight sigma_max), "
                 "optimizer (Adam's moments), curvature (sharpness against 2/lr or Adam's 38/lr), "
                 "blocks (each leaf's sharpness too), noise (gradient noise scale); default "
                 "norms,flow (+optimizer with adam)")
  p.add_argument("--every", type=_every,
                 help="with --model: log flow and spectra every N-th step (default 10), or "
                      "per tier: TIER=N (e.g. 10,norms=5)")
  p.add_argument("--window", type=_positive_int,
                 help="with --model: findings must hold on each of the last N logged steps "
                      "(default 5)")
  p.add_argument("--tensorboard", metavar="DIR",
                 help="with --model: also write TensorBoard event files (needs tensorboardX)")
  p.add_argument("--output", help="with --model: key or index of the model output the loss "
                                  "uses")
  p.add_argument("--no-plots", action="store_true", help="no PNGs (results, log and report only)")
  p.add_argument("--lr", type=_positive_float, help="learning rate (experiment default)")
  p.add_argument("--steps", type=_positive_int, help="training steps (experiment default)")
  p.add_argument("--batch-size", type=_positive_int, help="mini-batch size (default 64)")
  p.add_argument("--optimizer", choices=_train.OPTIMIZERS, help="experiment default")
  p.add_argument("--clip", type=_positive_float, help="clip_by_global_norm max_norm")
  p.add_argument("--depth", type=_positive_int, help="hidden layers (experiment default)")
  p.add_argument("--width", type=_positive_int, help="hidden units (default 64)")
  p.add_argument("--activation", action="append",
                 help="activation (experiment default); with --model: TAP=NAME, repeatable")
  p.add_argument("--eval-every", type=_positive_int, help="steps between evaluations (default 25)")
  p.add_argument("--on-nonfinite", default="stop", choices=_train.ON_NONFINITE,
                 help="NaN/Inf loss or gradients: stop (default) or skip the update")
  p.add_argument("--force", action="store_true",
                 help="run even when the memory or time estimate says it will not fit")
  add_common(p, "gradflow_out/train")
  p.set_defaults(run=lambda args: _commands().train(args))


def _commands():
  from gradflow_jax.cli import _commands
  return _commands


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="analyze.py", description=(
      "Measure gradient flow: activation statistics, saturation, dead units and "
      "gradient norms per layer. Without a subcommand, runs 'compare'."),
      epilog=("The default command's options (--depth, --width, --activations, --init, "
              "--norm, --residual, --weights, ...): analyze.py compare --help. Each "
              "command's: analyze.py COMMAND --help; all of them, with the files they "
              "write: docs/cli.md."))
  sub = parser.add_subparsers(dest="command", parser_class=_Parser)
  _compare_parser(sub)
  _depth_parser(sub)
  _width_parser(sub)
  _rnn_parser(sub)
  _train_parser(sub)
  _report_parser(sub)
  _diagnose_parser(sub)
  _forensics_parser(sub)
  _curvature_parser.add_parser(sub, add_common)
  parser.commands = tuple(sub.choices)  # the subcommands' names
  return parser


def prepare_output_folder(out: str) -> tuple[str | None, bool]:
  """(why ``--out`` cannot receive files or None, whether it was created now),
  checked before anything is computed. Temporaries that a killed run left in
  it (``.tmp-*``) are removed."""
  if os.path.exists(out) and not os.path.isdir(out):
    return f"expected --out to be a folder, got the file {out!r}", False
  created = not os.path.exists(out)
  try:
    os.makedirs(out, exist_ok=True)
    probe = os.path.join(out, f".tmp-probe-{os.getpid()}")
    with open(probe, "wb"):
      pass
    os.unlink(probe)
  except OSError as e:
    return f"expected a writable --out folder, got {out!r} ({e.strerror})", False
  for name in os.listdir(out):
    if name.startswith(".tmp-"):
      with contextlib.suppress(OSError):
        os.unlink(os.path.join(out, name))
  return None, created


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  if argv and not argv[0].startswith("-") and argv[0] not in parser.commands:
    import difflib
    near = difflib.get_close_matches(argv[0], parser.commands, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    print(f"analyze.py: error: unknown command {argv[0]!r} (choose from "
          f"{', '.join(parser.commands)}, or give options alone for compare){hint}",
          file=sys.stderr)
    return 2
  if not argv or (argv[0] not in parser.commands and argv[0] not in ("-h", "--help")):
    argv = ["compare"] + argv
  args = parser.parse_args(argv)
  args.out = args.out or getattr(args, "run_dir", None)
  problem, created = prepare_output_folder(args.out)
  if problem:
    print(f"analyze.py {args.command}: error: {problem}", file=sys.stderr)
    return 2
  status = _run(args)
  if status and created and not os.listdir(args.out):
    os.rmdir(args.out)  # a refused run leaves no empty folder behind
  return status


@contextlib.contextmanager
def _interrupt_remembered():
  """Ctrl-C raises KeyboardInterrupt as usual, and is also remembered and
  sent again every half second until the run ends: one that lands in a
  callback whose exceptions Python ignores (XLA's garbage-collection hook)
  would otherwise let the run finish with status 0."""
  import signal
  import threading
  hit, done = [], threading.Event()
  if (threading.current_thread() is not threading.main_thread()
      or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
    yield lambda: False
    return

  def resend():
    for _ in range(40):
      if done.wait(0.5):
        return
      os.kill(os.getpid(), signal.SIGINT)

  def on_sigint(signum, frame):
    if not hit:
      threading.Thread(target=resend, daemon=True).start()
    hit.append(signum)
    raise KeyboardInterrupt
  signal.signal(signal.SIGINT, on_sigint)
  try:
    yield lambda: bool(hit)
  finally:
    done.set()
    # after an interrupt, a resent signal still in flight is dropped
    signal.signal(signal.SIGINT, signal.SIG_IGN if hit else signal.default_int_handler)


def _run(args) -> int:
  import warnings
  import matplotlib
  matplotlib.use("Agg")  # files only; the library itself leaves the backend alone
  try:
    with warnings.catch_warnings(), _interrupt_remembered() as interrupted:
      warnings.simplefilter("ignore")  # what matters is in the tables, findings and files
      status = int(args.run(args) or 0)
    if interrupted():  # the KeyboardInterrupt was swallowed (raised in a GC callback)
      raise KeyboardInterrupt
    return status
  except (ValueError, TypeError, OSError) as e:
    msg = " ".join(str(e).split())
    if "output=" in msg and getattr(args, "output", None) is not None:
      msg += " (--output picks the model's output; the output folder is --out)"
    print(f"analyze.py {args.command}: error: {msg}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("analyze.py: interrupted; files written so far are complete", file=sys.stderr)
    return 130
  except Exception as e:  # XLA's out-of-memory error, wherever it comes from
    if not _sizes.out_of_memory(e):
      raise
    sizes = _sizes.SIZE_OPTIONS.get(args.command, "the sizes")
    print(f"analyze.py {args.command}: error: out of memory ({_sizes.first_line(e)}); lower {sizes}",
          file=sys.stderr)
    return 2


def script_main() -> None:
  """Entry point of ``scripts/analyze.py`` and ``gradflow-analyze``: runs
  :func:`main` and exits with its status. After an interrupt the process ends
  at once (``os._exit``): XLA's threads may still be inside a computation, and
  tearing the interpreter down under them crashed with SIGSEGV in about half
  of the tries. Nothing is lost: every file was written atomically."""
  code = main()
  if code == 130:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
  sys.exit(code)


if __name__ == "__main__":
  script_main()
