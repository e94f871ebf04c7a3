"""The command line: the default run, its files, and bad input (exit 2, one line)."""

import html
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gradflow_jax import _io
from gradflow_jax.cli import _cli

SMALL = ["--depth", "3", "--width", "16", "--batch-size", "8", "--in-dim", "6", "--classes", "3"]


def _run(args, capsys):
  code = _cli.main(args)
  out, err = capsys.readouterr()
  return code, out, err


def test_default_run_writes_files_and_schema(tmp_path, capsys):
  code, out, _ = _run(SMALL + ["--activations", "tanh,relu", "--out", str(tmp_path)], capsys)
  assert code == 0
  for name in ("results.json", "activation_stats.png", "grad_norms.png", "activation_curves.png"):
    assert (tmp_path / name).stat().st_size > 0
  data = json.loads((tmp_path / "results.json").read_text())
  assert data["schema_version"] == _io.SCHEMA_VERSION and data["command"] == "compare"
  assert [r["activation"] for r in data["runs"]] == ["tanh", "tanh", "relu", "relu"]
  assert [r["role"] for r in data["runs"]] == ["recommended", "shared"] * 2
  run = data["runs"][0]
  assert len(run["activation_stats"]["std"]) == 3 and len(run["gradient_stats"]["weight_grad_norm"]) == 4
  assert "Summary" in out and "tanh · xavier_uniform" in out


def test_json_flag_prints_json(tmp_path, capsys):
  code, out, _ = _run(SMALL + ["--activations", "gelu", "--init", "none", "--no-plots", "--json",
                               "--out", str(tmp_path)], capsys)
  assert code == 0
  data = json.loads(out)
  assert len(data["runs"]) == 1 and data["files"] == []
  assert not (tmp_path / "grad_norms.png").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--activations", "relu6"], "unknown activation 'relu6'"),
    (["--init", "kaiming_magic"], "unknown initializer"),
    (["--depth", "0"], "expected a positive integer"),
    (["--norm", "groupnorm"], "invalid choice"),
    (["--batch-size", "1"], "batch size >= 2"),
    (["--weights", "/nonexistent.npz"], "readable .npz"),
])
def test_bad_arguments_exit_2_with_one_line(args, fragment, tmp_path, capsys):
  code = None
  try:
    code = _cli.main(SMALL + args + ["--out", str(tmp_path), "--quiet"])
  except SystemExit as e:
    code = e.code
  _, err = capsys.readouterr()
  assert code == 2
  assert len(err.strip().splitlines()) == 1, err
  assert fragment in err


def _expect_one_line_exit_2(args, fragment, capsys):
  try:
    code = _cli.main(args)
  except SystemExit as e:
    code = e.code
  _, err = capsys.readouterr()
  assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


def test_a_misspelled_command_and_ignored_options_are_refused(tmp_path, capsys):
  """``bogus`` names the commands (and the nearest); MLP options with
  ``report --model`` are refused, not ignored."""
  _expect_one_line_exit_2(["bogus"], "choose from compare, ", capsys)
  _expect_one_line_exit_2(["reprot", "--quiet"], "did you mean 'report'", capsys)
  folder = os.path.join(os.path.dirname(__file__), "..", "examples")
  _expect_one_line_exit_2(["report", "--model", f"{folder}/nnx_mlp.py:make", "--depth", "5",
                           "--residual", "--out", str(tmp_path)],
                          "expected --depth, --residual only for the built-in MLP", capsys)


def test_weights_file_shapes_inferred_and_mismatch_reported(tmp_path, capsys):
  rng = np.random.default_rng(0)
  shapes = [(6, 16), (16, 16), (16, 3)]
  arrays = {}
  for i, s in enumerate(shapes):
    arrays[f"w{i}"] = rng.normal(0, 0.3, s).astype(np.float32)
    arrays[f"b{i}"] = np.zeros(s[1], np.float32)
  np.savez(tmp_path / "w.npz", **arrays)
  code, _, _ = _run(["--weights", str(tmp_path / "w.npz"), "--activations", "tanh", "--quiet",
                     "--out", str(tmp_path / "o")], capsys)
  assert code == 0
  data = json.loads((tmp_path / "o" / "results.json").read_text())
  assert data["settings"]["depth"] == 2 and data["runs"][0]["init"] == "weights file"
  np.save(tmp_path / "x.npy", rng.normal(size=(5, 7)))
  code, _, err = _run(["--weights", str(tmp_path / "w.npz"), "--inputs", str(tmp_path / "x.npy"),
                       "--out", str(tmp_path / "o")], capsys)
  assert code == 2 and "expected inputs with 6 features, got 7" in err


def test_nan_inputs_are_reported(tmp_path, capsys):
  x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
  x[2, 1] = np.nan
  np.save(tmp_path / "x.npy", x)
  code, out, _ = _run(SMALL + ["--inputs", str(tmp_path / "x.npy"), "--activations", "relu",
                               "--init", "none", "--out", str(tmp_path)], capsys)
  assert code == 0
  assert "inputs contain 1 NaN/Inf" in out
  run = json.loads((tmp_path / "results.json").read_text())["runs"][0]
  assert run["first_nonfinite_layer"] == 0
  assert run["activation_stats"]["nonfinite"] == [16, 16, 16]
  assert run["gradient_stats"]["loss"] is None  # NaN written as null
  kinds = [f["kind"] for f in run["findings"]]
  assert kinds[0] == "nonfinite_inputs" and "nonfinite" in kinds  # the cause first
  assert not any("learning rate" in f["fix"] for f in run["findings"])


def test_script_entry_point_bad_flag_one_line():
  script = os.path.join(os.path.dirname(__file__), "..", "scripts", "analyze.py")
  proc = subprocess.run([sys.executable, script, "--bogus"], capture_output=True, text=True)
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0 and "unrecognized arguments" in proc.stderr


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
  path = tmp_path / "results.json"
  _io.write_json(path, {"a": 1})
  with pytest.raises(TypeError):
    _io.write_json(path, {"a": object()})
  assert json.loads(path.read_text())["a"] == 1
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_depth_and_rnn_subcommands(tmp_path, capsys):
  code, out, _ = _run(["depth", "--activations", "tanh", "--max-depth", "6", "--width", "8",
                       "--batch-size", "2", "--seeds", "2", "--spectrum-depths", "3",
                       "--out", str(tmp_path / "d")], capsys)
  assert code == 0 and "Depth sweep" in out
  data = json.loads((tmp_path / "d" / "results.json").read_text())
  assert data["command"] == "depth" and len(data["points"]) == 1
  assert (tmp_path / "d" / "depth_sweep.png").exists()
  assert (tmp_path / "d" / "layer_jacobians.png").exists()
  code, out, _ = _run(["rnn", "--hidden", "6", "--steps", "5", "--batch-size", "2",
                       "--scales", "0.5,2", "--out", str(tmp_path / "r")], capsys)
  assert code == 0 and "RNN through time" in out
  assert (tmp_path / "r" / "rnn_through_time.png").exists()


@pytest.mark.parametrize("args, fragment", [
    (["depth", "--sigma-b", "-1"], "finite non-negative numbers"),
    (["depth", "--activations", "nope"], "unknown activation"),
    (["rnn", "--scales", "0,1"], "finite positive numbers"),
    (["rnn", "--steps", "1"], "--steps >= 2"),
])
def test_subcommand_bad_input(args, fragment, tmp_path, capsys):
  _expect_one_line_exit_2(args + ["--out", str(tmp_path), "--quiet"], fragment, capsys)


def test_train_subcommand_writes_logs(tmp_path, capsys):
  code, out, _ = _run(["train", "--experiment", "clipping", "--data", "teacher", "--steps", "6",
                       "--eval-every", "3", "--depth", "3", "--width", "8", "--out", str(tmp_path)],
                      capsys)
  assert code == 0 and "Training runs" in out
  data = json.loads((tmp_path / "results.json").read_text())
  assert data["complete"] and [r["label"] for r in data["runs"]] == ["no clipping",
                                                                     "clip_by_global_norm(1)"]
  steps = np.load(tmp_path / "steps_1_clip_by_global_norm_1.npz")
  assert steps["loss"].shape == (6,) and steps["preact_grad_norm"].shape == (6, 3)
  for name in ("training_curves.png", "grad_heatmap.png", "activation_fractions.png"):
    assert (tmp_path / name).exists()


@pytest.mark.parametrize("args, fragment", [
    (["train", "--lr", "0"], "finite number > 0"),
    (["train", "--data", "teacher", "--batch-size", "100000"], "batch size <="),
    (["train", "--experiment", "nope"], "invalid choice"),
    (["train", "--data", "/nonexistent.npz"], "readable .npz"),
])
def test_train_bad_input(args, fragment, tmp_path, capsys):
  _expect_one_line_exit_2(args + ["--out", str(tmp_path), "--quiet"], fragment, capsys)


def test_compare_report(tmp_path, capsys):
  code, _, _ = _run(["report"] + SMALL + ["--activations", "sigmoid", "--init", "none",
                                           "--out", str(tmp_path / "r")], capsys)
  page = (tmp_path / "r" / "report.html").read_text()
  assert code == 0 and "Findings" in page and page.count("data:image/png;base64,") == 3
  data = json.loads((tmp_path / "r" / "results.json").read_text())
  assert "report.html" in data["files"]
  found = [f for r in data["runs"] for f in r["findings"]]  # measured once: the same everywhere
  distinct = {(f["severity"], f["kind"], f["message"], tuple(f["layers"]), f["fix"]) for f in found}
  assert page.count('class="f ') - page.count('class="f ok"') == len(distinct)  # one card each
  assert page.index("At a glance") < page.index("<h2>Findings")  # the summary leads
  for r in data["runs"]:
    assert html.escape(r["label"]) in page[:page.index("<h2>Findings")]
  for f in found:
    assert html.escape(f["message"]) in page
  for r in data["runs"]:  # no run is told both to raise and to lower the weight scale
    assert len({f["evidence"].get("weight_scale") for f in r["findings"]} - {None}) <= 1


def test_diagnose_bad_factories(tmp_path, capsys):
  bad = tmp_path / "m.py"
  bad.write_text("def wrong():\n  return 3\n\ndef boom():\n  raise RuntimeError('no')\n\n"
                 "def notaps():\n  import jax.numpy as jnp\n"
                 "  return (lambda p, x: x @ p), jnp.ones((2, 3)), (jnp.ones((4, 2)), jnp.zeros(4, int))\n")
  for spec, fragment in ((f"{tmp_path}/none.py:f", "existing Python file"),
                         (f"{bad}:missing", "expected a function 'missing'"),
                         (f"{bad}:wrong", "return (model, params, (x, y))"),
                         (f"{bad}:boom", "RuntimeError at m.py:5: no"),
                         (f"{bad}:notaps", "at least one tapped layer"),
                         (str(bad), "file.py:factory")):
    _expect_one_line_exit_2(["diagnose", "--model", spec, "--out", str(tmp_path), "--quiet"],
                            fragment, capsys)


EXAMPLES = ["linen_cnn", "nnx_mlp", "nnx_embed", "linen_transformer", "plain_resnet"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_model_is_diagnosed_and_reported(name, tmp_path, capsys):
  """Each example in examples/ (BatchNorm and Dropout in training mode, NNX
  rngs, integer tokens with Embed, nn.scan over layers, a plain-JAX ResNet):
  `report --model` runs and the terminal, results.json and report.html agree."""
  folder = os.path.join(os.path.dirname(__file__), "..", "examples")
  # the example's own code on 16 examples (test time; the transformer also smaller)
  made = "make(depth=1, width=8)" if name == "linen_transformer" else "make()"
  small = tmp_path / "small.py"
  small.write_text(f"import sys\nsys.path.insert(0, {folder!r})\nimport {name}\n"
                   f"def make():\n  model, params, (x, y) = {name}.{made}\n"
                   "  return model, params, (x[:16], y[:16])\n")
  spec = f"{small}:make"
  named = ["--activation", "Conv_1=relu"] if name == "linen_cnn" else []  # BatchNorm between
  code, out, _ = _run(["report", "--model", spec, "--out", str(tmp_path)] + named, capsys)
  assert code == 0, out
  data = json.loads((tmp_path / "results.json").read_text())
  page = (tmp_path / "report.html").read_text()
  assert len(data["taps"]) >= 3 and data["loss"] is not None
  for f in data["findings"]:
    assert f["message"] in page
  distinct = {(f["severity"], f["kind"], f["message"], tuple(f["layers"])) for f in data["findings"]}
  assert page.count('class="f ') == max(1, len(distinct))
  assert sorted(data["files"]) == ["model_taps.png", "report.html"]
  io = data["input_jacobian"]  # integer tokens have no input Jacobian
  assert (io["target"] is None) == (name == "nnx_embed"), io
  if io["target"] is not None:
    assert all(v is None or v >= 0 for v in io["mean_sq_singular_value"])
  if name == "linen_cnn":
    assert "dense_act" in out and "Conv_1" in out and "data:image/png;base64," in page
    assert data["activation_names"][data["taps"].index("Conv_1")] == "relu"


def test_bad_activation_options(tmp_path, capsys):
  example = os.path.join(os.path.dirname(__file__), "..", "examples", "linen_cnn.py")
  for bad, fragment in (("Conv_1", "TAP=NAME"), ("nope=relu", "taps among"),
                        ("Conv_1=swishy", "unknown activation")):
    _expect_one_line_exit_2(["diagnose", "--model", f"{example}:make", "--activation", bad,
                             "--out", str(tmp_path), "--quiet"], fragment, capsys)


def test_a_plot_that_cannot_be_drawn_never_costs_the_results(tmp_path, capsys, monkeypatch):
  """A plot that raises (as matplotlib's "Data cannot be log-scaled" did for
  rnn --hidden 1) is skipped with a note; results.json is written anyway and
  says so. Off a terminal, progress is plain lines."""
  from gradflow_jax.render import _depth_plots

  def broken(*a, **k):
    raise ValueError("Data cannot be log-scaled because all values are <= 0.")
  monkeypatch.setattr(_depth_plots, "plot_rnn_through_time", broken)
  code, _, err = _run(["rnn", "--hidden", "1", "--steps", "5", "--batch-size", "2",
                       "--scales", "0.5", "--out", str(tmp_path)], capsys)
  data = json.loads((tmp_path / "results.json").read_text())
  assert code == 0 and data["files"] == [] and len(data["runs"]) == 1
  assert "log-scaled" in data["plots_not_drawn"]["rnn_through_time.png"]
  assert "note: rnn_through_time.png not drawn (ValueError: Data cannot" in err
  assert not (tmp_path / "rnn_through_time.png").exists()
  assert "rnn: " in err and "(1/1)" in err


def test_interrupt_during_depth_exits_130_cleanly_every_time(tmp_path):
  """SIGINT while XLA computes (the depth sweep under way): one line, status
  130, never a SIGSEGV from tearing the interpreter down under XLA's threads
  (it crashed in about half of the tries; two tries here)."""
  import signal
  import subprocess
  import sys
  import time
  script = os.path.join(os.path.dirname(__file__), "..", "scripts", "analyze.py")
  # two tries at once, interrupted at different moments
  children = []
  for attempt in range(2):
    # Python's own SIGINT handler in the child even where SIGINT is ignored
    # here (a background job); no preexec_fn (a fork of this threaded process)
    argv = [script, "depth", "--max-depth", "3000", "--out", str(tmp_path / f"o{attempt}")]
    launch = ("import runpy, signal, sys; signal.signal(signal.SIGINT, "
              f"signal.default_int_handler); sys.argv = {argv!r}; "
              f"runpy.run_path({script!r}, run_name='__main__')")
    children.append(subprocess.Popen([sys.executable, "-c", launch], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True))
  for attempt, p in enumerate(children):
    p.stderr.readline()  # the first progress line: the sweep is compiling or running
    time.sleep(1.0 + attempt)
    p.send_signal(signal.SIGINT)
  for p in children:
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert err.strip().splitlines()[-1] == ("analyze.py: interrupted; files written so far are "
                                            "complete")
