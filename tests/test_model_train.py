"""Training any probed model (analyze.py train --model): the logged numbers
against an independent measurement, the NaN stop, the window findings."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow_jax as gf
from gradflow_jax import _data
from gradflow_jax.cli import _cli
from gradflow_jax.measure import _model_stats
from gradflow_jax.studies import _model_findings, _model_train

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _apply(p, x):
  z = gf.tap("z", x @ p["w1"] + p["b1"], role="pre", activation="relu")
  return gf.tap("out", jax.nn.relu(z) @ p["w2"])


_RELU_NET = gf.probed(_apply, None, "relu_net")  # one forward: runs share compiled steps


def _relu_net(bias: float):
  """A plain-JAX ReLU net with taps; a negative first-layer bias kills units."""
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"w1": jax.random.normal(k1, (8, 32)) / np.sqrt(8), "b1": jnp.full((1, 32), bias),
            "w2": jax.random.normal(k2, (32, 3)) / np.sqrt(32)}
  return _RELU_NET._replace(params=params)


def _data_set(n=96):
  x = np.asarray(jax.random.normal(jax.random.key(1), (n, 8)), np.float32)
  y = (np.arange(n) % 3).astype(np.int32)
  return _data.Dataset(x, y, x[:32], y[:32], 3, "synthetic")


def test_logged_steps_equal_an_independent_measurement_of_the_same_batch():
  """Step 0's logged statistics equal model_flow_stats (a separate jitted
  path) on step 0's batch at the initial parameters; steps 0, 4, 8 logged."""
  model, data = _relu_net(0.0), _data_set()
  tc = _model_train.ModelTrainConfig(steps=10, every=4, batch_size=32, lr=1e-2)
  loss = _model_stats.loss_fn("cross_entropy")
  result = _model_train.train_model(model, data, loss, tc)
  assert result.steps == [0, 4, 8] and len(result.losses) == 10
  idx = next(_model_train._batches(len(data.x_train), 32, tc.seed))
  ref = gf.model_flow_stats(model, jnp.asarray(data.x_train[idx]), jnp.asarray(data.y_train[idx]))
  first = result.flows[0]
  np.testing.assert_allclose(first.tap_grad_norm, ref.tap_grad_norm, rtol=1e-5)
  np.testing.assert_allclose(first.activations.std, ref.activations.std, rtol=1e-5)
  np.testing.assert_allclose(first.activations.dead_fraction, ref.activations.dead_fraction)
  np.testing.assert_allclose(result.losses[0], ref.loss, rtol=1e-6)
  assert result.metrics[0]["tap_grad_norm/z"] == float(first.tap_grad_norm[0])
  assert result.accuracy is not None and 0 <= result.accuracy <= 1


def test_dead_units_found_only_when_dead_on_every_step_of_the_window():
  model, data = _relu_net(-6.0), _data_set()  # z = xW - 6: every unit below 0
  tc = _model_train.ModelTrainConfig(steps=9, every=2, batch_size=32, lr=1e-3, window=3)
  loss = _model_stats.loss_fn("cross_entropy")
  result = _model_train.train_model(model, data, loss, tc)
  found = _model_findings.window_findings(result, window=3)
  dead = [f for f in found if f.kind == "dead_units"]
  assert len(dead) == 1 and "last 3 logged steps (4-8)" in dead[0].message
  assert dead[0].evidence["window_steps"] == [4, 8]
  healthy = _model_train.train_model(_relu_net(0.0), data, loss, tc)
  mixed = result._replace(flows=result.flows[:-1] + [healthy.flows[-1]])
  assert not [f for f in _model_findings.window_findings(mixed, 3) if f.kind == "dead_units"]


def test_a_diverging_run_stops_with_finite_parameters_and_names_the_first_tap():
  model, data = _relu_net(0.0), _data_set()
  tc = _model_train.ModelTrainConfig(steps=50, every=1, batch_size=32, lr=1e6, optimizer="sgd")
  result = _model_train.train_model(model, data, _model_stats.loss_fn("cross_entropy"), tc)
  assert result.stopped_at is not None and result.stopped_at < 50
  assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(result.params))
  assert len(result.losses) == result.stopped_at + 1 and not np.isfinite(result.losses[-1])
  # independently, in plain JAX on the batch that stopped it, from the kept
  # parameters: the first tap whose value or dL/d tap is NaN/Inf
  batches = _model_train._batches(len(data.x_train), tc.batch_size, tc.seed)
  idx = [next(batches) for _ in range(result.stopped_at + 1)][-1]
  x, y, p = jnp.asarray(data.x_train[idx]), jnp.asarray(data.y_train[idx]), result.params
  z = x @ p["w1"] + p["b1"]

  def loss_of(dz, dout):
    out = jax.nn.relu(z + dz) @ p["w2"] + dout
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
  out = jax.nn.relu(z) @ p["w2"]
  gz, gout = jax.grad(loss_of, argnums=(0, 1))(jnp.zeros_like(z), jnp.zeros_like(out))
  bad = [not (np.isfinite(np.asarray(v)).all() and np.isfinite(np.asarray(g)).all())
         for v, g in ((z, gz), (out, gout))]
  assert any(bad) and result.first_nonfinite_tap == ("z", "out")[bad.index(True)]
  kinds = [f.kind for f in _model_findings.window_findings(result, 5)]
  assert kinds[0] == "nonfinite_training"
  # the run's flight recorder fired by the step that stopped it (a step
  # earlier here: a gradient norm beyond float range before any NaN)
  assert result.stopped_at - 1 <= result.recorder_summary()["fired_step"] <= result.stopped_at
  assert result.recorder_summary()["reasons"][0].startswith("non-finite")
  assert int(result.recorder.steps.max()) == result.stopped_at


def test_cli_train_model_writes_consistent_log_results_plots_and_report(tmp_path, capsys,
                                                                       caplog):
  out = tmp_path / "o"
  code = _cli.main(["train", "--model", f"{EXAMPLES}/nnx_mlp.py:make", "--steps", "12",
                    "--every", "5", "--batch-size", "32", "--out", str(out),
                    "--tensorboard", str(tmp_path / "tb")])
  text = capsys.readouterr().out
  assert code == 0, text
  data = json.loads((out / "results.json").read_text())
  assert data["data"] == "digits" and data["logged_steps"] == [0, 5, 10]
  assert data["steps_run"] == 12 and len(data["loss"]) == 12
  records = gf.watch.read_jsonl(out / "log.jsonl")
  # the norms tier every step, the flow tier every 5th
  assert [r["step"] for r in records if "scalars" in r] == list(range(12))
  logged = [r for r in records if "scalars" in r and "tap_grad_norm/" + data["taps"][0] in
            r["scalars"]]
  assert [r["step"] for r in logged] == [0, 5, 10]
  for name in data["taps"]:
    assert [r["scalars"][f"tap_grad_norm/{name}"] for r in logged] == pytest.approx(
        data["tap_stats"][name]["grad_norm"])
    if f"act/always_active/{name}" in logged[0]["scalars"]:  # ReLU-like taps
      assert [r["scalars"][f"act/always_active/{name}"] for r in logged] == pytest.approx(
          data["tap_stats"][name]["always_active_fraction"])
  assert sorted(data["files"]) == ["activation_histograms.png", "dashboard.png",
                                   "gradient_histograms.png",
                                   "log.jsonl", "report.html", "tap_grad_heatmap.png",
                                   "training_curves.png", "update_ratios.png"]
  assert "test accuracy" in text and os.listdir(tmp_path / "tb")
  assert not [r for r in caplog.records if r.name.startswith("tensorboardX")]  # inf ratios
  hist = [r for r in records if r.get("histogram") == f"act/{data['taps'][0]}"]
  assert [r["step"] for r in hist] == [0, 5, 10] and sum(hist[0]["counts"]) > 0
  page = (out / "report.html").read_text()
  for f in data["findings"]:
    assert f["message"] in page


def test_cli_train_model_uses_the_factorys_own_loss_and_data(tmp_path):
  """A factory's fourth item: its loss (label-smoothed cross-entropy) gives
  step 0's logged loss, recomputed here on the same first mini-batch of its
  own data; --loss still overrides it."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("nnx_embed", f"{EXAMPLES}/nnx_embed.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  model, _, _, extras = mod.make_task()
  x_train, y_train, x_test, _ = extras["data"]
  idx = next(_model_train._batches(len(x_train), 32, 0))
  from flax import nnx
  logits = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x_train[idx]))
  smoothed = float(mod.smoothed_cross_entropy(logits, jnp.asarray(y_train[idx])))
  plain = float(optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.asarray(y_train[idx])).mean())
  for flag, name, expected in (([], "the factory's loss", smoothed),
                               (["--loss", "cross_entropy"], "cross_entropy", plain)):
    out = tmp_path / name.replace(" ", "_")
    code = _cli.main(["train", "--model", f"{EXAMPLES}/nnx_embed.py:make_task", "--steps", "2",
                      "--every", "1", "--batch-size", "32", "--no-plots", "--quiet",
                      "--out", str(out)] + flag)
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert data["data"] == f"the factory's data ({len(x_train)} train, {len(x_test)} test)"
    assert data["loss_name"] == name
    assert data["loss"][0] == pytest.approx(expected, rel=1e-5)
  assert abs(smoothed - plain) > 10 * 1e-5 * plain  # the tolerance tells the two losses apart


def test_factory_extras_that_are_wrong_get_one_line(tmp_path, capsys):
  bad = tmp_path / "bad.py"
  bad.write_text("import numpy as np\n"
                 "x = np.zeros((4, 3), np.float32); y = np.zeros(4, np.int32)\n"
                 "f = lambda p, x: x\n"
                 "def extra_key(): return f, {}, (x, y), {'optimizer': 1}\n"
                 "def loss_not_callable(): return f, {}, (x, y), {'loss': 'mse'}\n"
                 "def short_data(): return f, {}, (x, y), {'data': (x, y)}\n"
                 "def mismatched(): return f, {}, (x, y), {'data': (x, y[:3], x, y)}\n")
  for name, words in (("extra_key", "keys among loss, data, batches, got ['optimizer']"),
                      ("loss_not_callable", "a function loss(output, y), got a str"),
                      ("short_data", "(x_train, y_train, x_test, y_test), got a tuple of 2"),
                      ("mismatched", "same number (>= 1) of examples, got 4 and 3")):
    code = _cli.main(["train", "--model", f"{bad}:{name}", "--steps", "2", "--quiet",
                      "--out", str(tmp_path / name)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err


def test_skip_mode_drops_bad_steps_and_goes_on():
  """--on-nonfinite skip (optax.apply_if_finite): a batch with a NaN example
  every few steps is dropped, the others train; the run reaches its end."""
  model, data = _relu_net(0.0), _data_set()
  x = data.x_train.copy()
  x[5, 0] = np.nan  # one poisoned example: the batches holding it are dropped
  data = data._replace(x_train=x)
  tc = _model_train.ModelTrainConfig(steps=9, every=3, batch_size=32, lr=1e-2,
                                     on_nonfinite="skip")
  result = _model_train.train_model(model, data, _model_stats.loss_fn("cross_entropy"), tc)
  bad = ~np.isfinite(result.losses)
  assert len(result.losses) == 9 and result.skipped == int(bad.sum()) == 3  # one epoch in 3
  assert result.stopped_at == int(np.argmax(bad)) and result.first_nonfinite_tap == "z"
  assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(result.params))
  (f,) = [f for f in _model_findings.window_findings(result, 3) if f.kind == "nonfinite_training"]
  assert "3 of 9 steps skipped" in f.message


def test_cli_train_model_writes_the_flight_recorders_window_when_it_fires(tmp_path, capsys):
  """A factory trained at a learning rate that diverges: the run's flight
  recorder fires, forensics.json and forensics.png are written beside
  results.json, and analyze.py forensics reads them back."""
  (tmp_path / "net.py").write_text(
      "import jax, jax.numpy as jnp\nfrom flax import linen as nn\n"
      "def make():\n  x = jax.random.normal(jax.random.key(1), (32, 8))\n"
      "  m = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])\n"
      "  return m, m.init(jax.random.key(0), x), (x, jnp.arange(32) % 3)\n")
  out = tmp_path / "o"
  code = _cli.main(["train", "--model", f"{tmp_path / 'net.py'}:make", "--steps", "20",
                    "--lr", "1e6", "--optimizer", "sgd", "--no-plots", "--out", str(out)])
  assert code == 0
  data = json.loads((out / "results.json").read_text())
  fired = data["flight_recorder"]["fired_step"]
  assert fired is not None and fired <= data["stopped_at"]
  report = json.loads((out / "forensics.json").read_text())
  assert report["trigger"]["step"] == fired and not (out / "forensics.png").exists()  # --no-plots
  assert f"flight recorder fired at step {fired}" in capsys.readouterr().out
  assert _cli.main(["forensics", str(out), "--quiet"]) == 0  # draws it
  assert (out / "forensics.png").read_bytes()[:4] == b"\x89PNG"
