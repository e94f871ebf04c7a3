"""Hostile command lines: each is refused with exit status 2 and one line on
stderr naming what was wrong, before anything is computed, and leaves no file
(and no folder) behind in --out."""

import os

import numpy as np
import pytest

from gradflow_jax.cli import _cli

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


@pytest.fixture
def files(tmp_path):
  f = tmp_path / "in"
  f.mkdir()
  (f / "text.txt").write_text("hello\n")
  (f / "text.npy").write_text("not numpy\n")
  np.save(f / "one_d.npy", np.zeros(5, np.float32))
  np.save(f / "three.npy", np.zeros((4, 3), np.float32))
  np.savez(f / "x.npz", a=np.zeros(3))
  np.savez(f / "one_w.npz", w0=np.zeros((4, 4)), b0=np.zeros(4))
  z = lambda *s: np.zeros(s, np.float32)
  np.savez(f / "mismatch.npz", x_train=z(150, 4), y_train=np.zeros(100, np.int64),
           x_test=z(5, 4), y_test=np.zeros(5, np.int64))
  np.savez(f / "empty_test.npz", x_train=z(150, 4), y_train=np.zeros(150, np.int64),
           x_test=z(0, 4), y_test=np.zeros(0, np.int64))
  np.savez(f / "float_labels.npz", x_train=z(10, 4), y_train=z(10), x_test=z(5, 4), y_test=z(5))
  nan = z(20, 64)
  nan[3, 5] = np.nan
  np.savez(f / "nan.npz", x_train=nan, y_train=np.zeros(20, np.int64), x_test=z(5, 64),
           y_test=np.zeros(5, np.int64))
  np.savez(f / "negative.npz", x_train=z(10, 4), y_train=-np.ones(10, np.int64),
           x_test=z(5, 4), y_test=np.zeros(5, np.int64))
  (f / "nan_data.py").write_text(
      "import jax, numpy as np\nfrom flax import linen as nn\n"
      "def make():\n  x = np.zeros((8, 4), np.float32)\n  y = np.zeros(8, np.int32)\n"
      "  bad = x.copy()\n  bad[2, 1] = np.inf\n"
      "  params = nn.Dense(3).init(jax.random.key(0), x)\n"
      "  return nn.Dense(3), params, (x, y), {'data': (x, y, bad, y)}\n")
  (f / "broken.py").write_text("def make(:\n")
  (f / "raises.py").write_text("def make():\n  raise RuntimeError('no data here')\n")
  (f / "two.py").write_text("def make():\n  return 1, 2\n")
  (f / "wrong_params.py").write_text(
      "import jax, jax.numpy as jnp\nfrom flax import linen as nn\n"
      "def make():\n  x = jnp.ones((4, 5))\n"
      "  other = nn.Dense(3).init(jax.random.key(0), jnp.ones((4, 7)))\n"
      "  return nn.Dense(3), other, (x, jnp.zeros(4, jnp.int32))\n")
  return f


def _cases(f):
  c = ["compare"]
  cv = ["curvature", "--model", f"{EXAMPLES}/nnx_mlp.py:make"]
  return [
      (c + ["--seed", "99999999999999999999999"], "seed in [0, 2**32)"),
      (c + ["--seed", "-1"], "seed in [0, 2**32)"),
      (c + ["--seed", "abc"], "seed in"),
      (c + ["--activations", "relu,,tanh"], "without empty items"),
      (c + ["--activations", ","], "got nothing"),
      (c + ["--activations", "relu6"], "unknown activation"),
      (c + ["--depth", "0"], "positive integer"),
      (c + ["--width", "-3"], "positive integer"),
      (c + ["--batch-size", "1.5"], "positive integer"),
      (c + ["--batch-size", "1"], "batch size >= 2"),
      (c + ["--sigma-b", "inf"], "finite number"),
      (c + ["--sigma-b", "nan"], "finite number"),
      (c + ["--init", "kaiming_magic"], "unknown initializer"),
      (c + ["--norm", "groupnorm"], "invalid choice"),
      (c + ["--loss", "hinge"], "invalid choice"),
      (c + ["--inputs", str(f / "x.npz")], ".npy inputs file"),
      (c + ["--inputs", str(f / "missing.npy")], "readable .npy"),
      (c + ["--inputs", str(f / "text.npy")], "readable .npy"),
      (c + ["--inputs", str(f / "one_d.npy")], "shape (batch >= 2, in_dim)"),
      (c + ["--inputs", str(f / "three.npy")], "128 features, got 3"),
      (c + ["--weights", str(f / "text.txt")], "readable .npz weights"),
      (c + ["--weights", str(f / "missing.npz")], "readable .npz weights"),
      (c + ["--weights", str(f / "one_w.npz")], "2-D weights w0..w{n-1} (n >= 2)"),
      (c + ["--out", str(f / "text.txt")], "expected --out to be a folder"),
      (c + ["--out", str(f / "text.txt" / "sub")], "writable --out folder"),
      (c + ["--bogus"], "unrecognized arguments"),
      (["depth", "--sigma-w", "inf"], "finite positive numbers"),
      (["depth", "--sigma-w", "0"], "finite positive numbers"),
      (["depth", "--sigma-w", "1,,2"], "without empty items"),
      (["depth", "--sigma-b", "-1"], "finite non-negative numbers"),
      (["depth", "--max-depth", "100000000"], "expected the depth sweep to fit in memory"),
      (["depth", "--max-depth", "80000000", "--width", "1", "--seeds", "1", "--batch-size", "2"],
       "expected the depth sweep to finish within 60 min: it is estimated to take about"),
      (c + ["--width", "10000000"], "expected the comparison to fit in memory"),
      (c + ["--batch-size", "100000000"], "expected the comparison to fit in memory"),
      (c + ["--depth", "100000", "--width", "8"],
       "expected the comparison to finish within 60 min"),
      (["report", "--width", "10000000"], "expected the comparison to fit in memory"),
      (["train", "--steps", "1000000000000"], "expected the training to fit in memory"),
      (["train", "--steps", "10000000"], "expected the training to finish within 60 min"),
      (["train", "--width", "10000000"], "expected the training to fit in memory"),
      (["train", "--depth", "100000", "--width", "8"],
       "expected the training to finish within 60 min"),
      (["rnn", "--hidden", "100000"], "expected the RNN sweep to fit in memory"),
      (["rnn", "--steps", "100000000"], "expected the RNN sweep to fit in memory"),
      (["rnn", "--hidden", "4096", "--steps", "16", "--batch-size", "1"],
       "expected the RNN sweep to finish within 60 min"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--steps", "1000000000000"],
       "expected the training to fit in memory"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--steps", "10000000"],
       "expected the training to finish within 60 min"),
      (["depth", "--model", f"{EXAMPLES}/residual_mlp.py:make_unscaled", "--depths", "100000"],
       "expected the depth study to"),
      (["depth", "--model", f"{EXAMPLES}/residual_mlp.py:make_unscaled", "--depths", "2,4",
        "--seeds", "100000000"], "expected the depth study to fit in memory"),
      (["width", "--model", f"{EXAMPLES}/mlp_width.py:make", "--widths", "64,10000000"],
       "expected the width study to fit in memory"),
      (["width", "--model", f"{EXAMPLES}/mlp_width.py:make", "--steps", "100000000"],
       "expected the width study to finish within 60 min"),
      (["forensics", str(f / "none")], "expected a readable forensics.json"),
      (["forensics", str(f)], "expected a readable forensics.json"),
      (["depth", "--inits", "nope"], "unknown initializer"),
      (["depth", "--activations", "bogus"], "unknown activation"),
      (["depth", "--spectrum-depths", "0"], "positive integer"),
      (["rnn", "--scales", "1,inf"], "finite positive numbers"),
      (["rnn", "--scales", "0"], "finite positive numbers"),
      (["rnn", "--activation", "relu"], "invalid choice"),
      (["rnn", "--steps", "1"], "--steps >= 2"),
      (["rnn", "--scale-kind", "trace"], "invalid choice"),
      (["train", "--data", "nope"], "expected --data digits, teacher or a .npz"),
      (["train", "--data", str(f / "mismatch.npz")], "one label per example in y_train"),
      (["train", "--data", str(f / "empty_test.npz")], "at least one example in x_test"),
      (["train", "--data", str(f / "x.npz")], "expected keys x_train"),
      (["train", "--data", str(f / "float_labels.npz")], "integer labels"),
      (["train", "--data", str(f / "nan.npz")],
       "nan.npz, got 1 NaN/Inf value (the first in example 3)"),
      (["train", "--data", str(f / "negative.npz")], "labels >= 0"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--data", str(f / "nan.npz")],
       "expected finite x_train"),
      (["train", "--model", str(f / "nan_data.py") + ":make"],
       "expected finite x_test in the factory's extras['data']"),
      (["train", "--lr", "0"], "finite number > 0"),
      (["train", "--lr", "nan"], "finite number > 0"),
      (["train", "--optimizer", "lion"], "invalid choice"),
      (["train", "--experiment", "nope"], "invalid choice"),
      (["train", "--on-nonfinite", "ignore"], "invalid choice"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--depth", "3"],
       "only for the built-in MLP"),
      (["train", "--every", "3"], "only with --model"),
      (["train", "--watch", "norms"], "only with --model"),
      (["train", "--experiment", "edge-of-stability", "--lr", "0.1"],
       "expected no --lr with --experiment edge-of-stability"),
      (["train", "--experiment", "edge-of-stability", "--steps", "100000000"],
       "expected the training to finish within 60 min"),
      (["train", "--experiment", "edge-of-stability", "--activation", "sigmoid"],
       "expected --activation in tanh, relu, gelu, silu"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--watch", "noise", "--batch-size",
        "30"], "expected --batch-size a multiple of 4 for the noise tier"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--watch", "norms,gradients"],
       "expected tiers from norms,flow,spectra,optimizer,curvature,blocks,noise, got gradients"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--watch", ","], "got nothing"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--every", "flow=0"],
       "N a positive integer"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--every", "weights=3"],
       "expected --every TIER=N with TIER in norms,flow,spectra,optimizer,curvature,blocks,"
       "noise, "
       "got 'weights=3'"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--watch", "norms,optimizer",
        "--optimizer", "sgd"], "expected --optimizer adam for the optimizer tier"),
      (["train", "--tensorboard", str(f / "tb")], "only with --model"),
      (["train", "--activation", "relu", "--activation", "tanh"], "one --activation NAME"),
      (["train", "--activation", "Dense_0=relu"], "one --activation NAME"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--activation", "relu"], "TAP=NAME"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--activation", "layers/0=relu6"],
       "unknown activation"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--data", "teacher"],
       "shaped like the factory's batch"),
      (["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--every", "0"], "positive integer"),
      (["train", "--model", str(f / "wrong_params.py") + ":make"],
       "expected the model to run on the factory's batch with its params"),
      (["diagnose"], "required: --model"),
      (["diagnose", "--model", str(f / "none.py") + ":make"], "existing Python file"),
      (["diagnose", "--model", f"{EXAMPLES}/nnx_mlp.py:nothere"], "a function 'nothere'"),
      (["diagnose", "--model", str(f / "broken.py") + ":make"], "importable module"),
      (["diagnose", "--model", str(f / "raises.py") + ":make"], "RuntimeError at raises.py:2"),
      (["diagnose", "--model", str(f / "two.py") + ":make"], "got a tuple of 2"),
      (["train", "--model", str(f / "two.py") + ":make"], "or (model, params, (x, y), extras)"),
      (["report", "--model", str(f / "none.py") + ":make"], "existing Python file"),
      (["diagnose", "--model", str(f / "wrong_params.py") + ":make"],
       "expected the model to run on the factory's batch with its params"),
      (["diagnose", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--output", str(f / "folder")],
       "the output folder is --out"),
      (["curvature"], "required: --model"),
      (cv + ["--probes", "0"], "positive integer"),
      (cv + ["--examples", "0"], "positive integer"),
      (cv + ["--top", "0"], "positive integer"),
      (cv + ["--lr", "-1"], "finite number > 0"),
      (cv + ["--top", "9", "--lanczos-steps", "8"],
       "expected --top <= --lanczos-steps (each probe's Krylov space holds --lanczos-steps "
       "directions), got --top 9 and --lanczos-steps 8"),
      (cv + ["--probes", "100000000"], "expected the curvature measurement to fit in memory"),
      (["curvature", "--model", str(f / "wrong_params.py") + ":make"],
       "expected the model to run on the factory's batch with its params"),
  ]


_CASES = _cases(__import__("pathlib").Path("IN"))  # the table, for the test ids


def test_the_table_is_large():
  assert len(_CASES) >= 40


@pytest.mark.parametrize("i", range(len(_CASES)),
                         ids=[" ".join(a).replace(os.sep, "/")[-60:] for a, _ in _CASES])
def test_hostile_command_lines_are_refused_cleanly(i, files, capsys):
  args, fragment = _cases(files)[i]
  out = files.parent / "out"
  argv = list(args) if "--out" in args else list(args) + ["--out", str(out)]
  try:
    code = _cli.main(argv)
  except SystemExit as e:
    code = e.code
  _, err = capsys.readouterr()
  lines = err.strip().splitlines()
  assert code == 2, (args, err)
  assert len(lines) == 1 and "Traceback" not in err, (args, err)
  assert fragment in err, (args, err)
  assert not out.exists(), (args, sorted(os.listdir(out)))


def test_stale_temporaries_are_cleaned_and_out_checked_first(tmp_path):
  out = tmp_path / "o"
  out.mkdir()
  (out / ".tmp-abc-results.json").write_text("{")  # what a SIGKILL mid-write leaves
  (out / "keep.txt").write_text("mine")
  assert _cli.prepare_output_folder(str(out)) == (None, False)
  assert sorted(os.listdir(out)) == ["keep.txt"]
  problem, _ = _cli.prepare_output_folder(str(out / "keep.txt"))
  assert "to be a folder" in problem


def test_out_of_memory_from_xla_anywhere_is_one_line_naming_the_sizes(capsys):
  """XLA's out-of-memory error (here raised by a stand-in command; a real one
  needs tens of GB) ends in exit 2 and one line naming what to lower; any
  other runtime error is not swallowed."""
  import argparse
  import jax

  def oom(_):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 69120000000 "
                                     "bytes.\nmore detail")
  args = argparse.Namespace(command="depth", run=oom, output=None)
  assert _cli._run(args) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and "out of memory" in err and "--max-depth" in err

  def other(_):
    raise jax.errors.JaxRuntimeError("INTERNAL: something else")
  with pytest.raises(jax.errors.JaxRuntimeError):
    _cli._run(argparse.Namespace(command="depth", run=other, output=None))


def test_top_level_help_says_where_the_default_commands_options_are(capsys):
  with pytest.raises(SystemExit) as e:
    _cli.main(["--help"])
  out = capsys.readouterr().out
  assert e.value.code == 0 and "analyze.py compare --help" in " ".join(out.split())
  assert os.path.exists(os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md"))
  with pytest.raises(SystemExit):
    _cli.main(["compare", "--help"])
  assert "--activations" in capsys.readouterr().out
