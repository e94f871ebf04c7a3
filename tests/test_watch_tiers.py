"""The tiers of a --model run (norms, flow, spectra, optimizer), each logged on
its own schedule, checked against another computation of the same number; the
writers' flat names; a factory's own batch iterator; the dashboard."""

import json

import jax
import jax.numpy as jnp
import matplotlib.figure
import numpy as np
import optax
import pytest

import gradflow_jax as gf
from gradflow_jax.cli import _cli
from helpers import tiny_factory

def test_every_tier_is_logged_on_its_own_schedule_and_agrees_with_the_flow_tier(tmp_path):
  out = tmp_path / "o"
  code = _cli.main(["train", "--model", tiny_factory(tmp_path), "--steps", "11",
                    "--watch", "norms,flow,spectra,optimizer", "--every", "5,norms=2",
                    "--batch-size", "32", "--quiet", "--no-plots", "--out", str(out)])
  assert code == 0
  data = json.loads((out / "results.json").read_text())
  watch, leaves = data["watch"], data["watch"]["leaves"]
  assert watch["tiers"] == ["norms", "flow", "spectra", "optimizer"]
  assert watch["norms"]["steps"] == [0, 2, 4, 6, 8, 10]
  assert watch["spectra"]["steps"] == [0, 5, 10] and data["logged_steps"] == [0, 5, 10]
  assert watch["optimizer"]["steps"] == list(range(11))
  records = {r["step"]: r["scalars"] for r in gf.watch.read_jsonl(out / "log.jsonl")
             if "scalars" in r}
  assert sorted(records) == list(range(11))  # the optimizer tier every step
  norms = {k: np.asarray(v, float) for k, v in watch["norms"].items() if k != "steps"}
  # step 0 and 10: the flow tier's own gradient norms and update ratios (new -
  # old parameters) against the norms tier's (||g||, ||update|| / ||p||)
  for row, step in ((0, 0), (5, 10)):
    flow = records[step]
    assert [flow[f"grad_norm/{n}"] for n in leaves] == pytest.approx(norms["grad_norm"][row],
                                                                      rel=1e-5)
    with np.errstate(divide="ignore", invalid="ignore"):
      ratio = norms["update_norm"][row] / norms["param_norm"][row]
    moved = np.isfinite(ratio) & (ratio > 1e-4)  # new - old rounds off below that
    assert np.asarray([flow[f"update_ratio/{n}"] for n in leaves])[moved] == pytest.approx(
        ratio[moved], rel=2e-3)
  # Adam after one step: m-hat = g, so ||m-hat|| = ||g|| and cos(m, g) = 1
  opt = {k: np.asarray(v, float) for k, v in watch["optimizer"].items() if k != "steps"}
  assert opt["m_hat_norm"][0] == pytest.approx(norms["grad_norm"][0], rel=1e-5)
  assert opt["cos_m_g"][0] == pytest.approx(1.0, abs=1e-5)
  # spectra: every kernel; unsettled at step 0 (one power pair from a random
  # vector) and so left out of the log, counted instead
  sigma = np.asarray(watch["spectra"]["sigma"], float)
  kernels = [i for i, n in enumerate(leaves) if n.endswith("kernel")]
  assert np.isfinite(sigma[:, kernels]).all() and np.isnan(np.delete(sigma, kernels, 1)).all()
  assert records[0]["spectra/unsettled"] == len(kernels)
  assert not [k for k in records[0] if k.startswith("sigma_max/")]
  settled = [k for k in records[10] if k.startswith("sigma_max/")]
  assert len(settled) + records[10]["spectra/unsettled"] == len(kernels)
  for k in settled:
    assert records[10][k] == pytest.approx(sigma[2, leaves.index(k.split("/", 1)[1])])
  fig = gf.plots.dashboard(data)  # the CLI's dashboard.png: tests/test_model_train.py
  assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 5  # 4 + colour bar


def test_the_norms_tier_alone_logs_every_step_and_no_flow(tmp_path):
  out = tmp_path / "o"
  code = _cli.main(["train", "--model", tiny_factory(tmp_path), "--steps", "4",
                    "--watch", "norms", "--batch-size", "16", "--quiet", "--no-plots",
                    "--out", str(out)])
  assert code == 0
  data = json.loads((out / "results.json").read_text())
  assert data["watch"]["tiers"] == ["norms"] and data["logged_steps"] == []
  records = [r for r in gf.watch.read_jsonl(out / "log.jsonl") if "scalars" in r]
  assert [r["step"] for r in records] == [0, 1, 2, 3]
  assert not [k for k in records[0]["scalars"] if k.startswith(("act/", "tap_grad_norm/"))]
  assert records[0]["scalars"]["loss"] == pytest.approx(data["loss"][0])


_FACTORY = """
import jax, numpy as np
from flax import linen as nn

rng = np.random.default_rng(0)
X = rng.normal(size=(64, 6)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int32)

def _make(batches):
  params = nn.Dense(2).init(jax.random.key(0), X[:2])
  return nn.Dense(2), params, (X[:8], Y[:8]), {"data": (X, Y, X[:16], Y[:16]),
                                               "batches": batches}

def stream(seed):
  for i in range(5):
    yield X[8 * i:8 * i + 8], Y[8 * i:8 * i + 8]

def make():
  return _make(stream)

def make_nan():
  def bad(seed):
    for i, (x, y) in enumerate(stream(seed)):
      if i == 2:
        x = x.copy(); x[3, 1] = np.nan
      yield x, y
  return _make(bad)

def make_wrong():
  return _make([X[:8]])
"""


def test_a_factorys_batch_iterator_is_trained_on_in_order(tmp_path, capsys):
  path = tmp_path / "stream.py"
  path.write_text(_FACTORY)
  out = tmp_path / "o"
  code = _cli.main(["train", "--model", f"{path}:make", "--steps", "5", "--every", "1",
                    "--optimizer", "sgd", "--lr", "0.5", "--quiet", "--no-plots",
                    "--out", str(out)])
  assert code == 0
  data = json.loads((out / "results.json").read_text())
  assert data["data"].startswith("the factory's batches")
  # the reference: plain SGD on the same five batches, in order
  import importlib.util
  spec = importlib.util.spec_from_file_location("stream", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  model, params, _, extras = mod.make()
  losses = []
  for x, y in extras["batches"](0):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, jnp.asarray(x)), jnp.asarray(y)).mean()
    value, g = jax.value_and_grad(loss)(params)
    params = jax.tree.map(lambda p, d: p - 0.5 * d, params, g)
    losses.append(float(value))
  assert data["loss"] == pytest.approx(losses, rel=1e-5)
  for name, steps, words in (("make", "6", "the factory's batch iterator ran out"),
                             ("make_nan", "5", "NaN/Inf value (the first in example 3)"),
                             ("make_wrong", "5", "(x, y) pairs, got a ndarray at batch 0")):
    code = _cli.main(["train", "--model", f"{path}:{name}", "--steps", steps, "--quiet",
                      "--no-plots", "--out", str(tmp_path / name)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err


def test_the_writers_log_every_tier_under_flat_per_leaf_names(tmp_path):
  # "scanned": a bias stacked over 3 layers by nn.scan, 2-D but not a matrix
  params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
            "scanned": {"bias": jnp.ones((3, 2))}}
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  updates = jax.tree.map(lambda p: -0.1 * jnp.ones_like(p), params)
  norms = gf.watch.step_norms(jnp.float32(1.5), grads, params, updates)
  spectra = gf.watch.WeightSpectra(iterations=30)
  s = spectra.update(spectra.update(spectra.init(params, jax.random.key(0)), params), params)
  with gf.watch.StepLogger(gf.watch.JsonlWriter(tmp_path / "log.jsonl")) as log:
    log(3, norms=norms, spectra=s, params=params, clip=1.0,
        stable_rank=gf.watch.stable_ranks(params, s.sigma))
  (record,) = [r for r in gf.watch.read_jsonl(tmp_path / "log.jsonl") if "scalars" in r]
  got = record["scalars"]
  assert record["step"] == 3 and got["loss"] == 1.5
  assert got["grad_norm/dense/kernel"] == pytest.approx(0.5 * np.sqrt(6))
  assert got["grad_norm/global"] == pytest.approx(0.5 * np.sqrt(14))
  assert got["grad_norm/global_clipped"] == 1.0  # min(||g||, clip)
  assert got["update_ratio/dense/kernel"] == pytest.approx(0.1)
  assert np.isnan(got["update_ratio/dense/bias"])  # ||b|| = 0: no ratio
  assert got["param_norm/dense/bias"] == 0 and got["nonfinite/grad/dense/kernel"] == 0
  # a 3x2 matrix of ones: sigma_max = sqrt(6), stable rank 1; no bias entry
  assert got["sigma_max/dense/kernel"] == pytest.approx(np.sqrt(6), rel=1e-5)
  assert got["stable_rank/dense/kernel"] == pytest.approx(1.0, rel=1e-4)
  assert "sigma_max/dense/bias" not in got and got["spectra/unsettled"] == 0
  assert "sigma_max/scanned/bias" not in got and np.isnan(float(s.sigma[2]))
  with pytest.raises(ValueError, match="expected params= or names="):
    gf.watch.log_step(gf.watch.JsonlWriter(tmp_path / "x.jsonl"), 0, norms=norms)
