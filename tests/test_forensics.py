"""The flight recorder names the culprit of a fault injected on purpose: one
batch scaled by 1e4, one layer's learning rate x100, a NaN written into one
weight; on a linen and an NNX model trained on digits with plain SGD. Its
norms equal jnp.linalg.norm of jax.grad's leaves."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import gradflow_jax as gf
from gradflow_jax.watch._writers import leaf_names

T = 30        # the step the fault is injected at
STEPS = 36
TARGET = 1    # the dense layer the layer faults hit


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for width in (32, 32):
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(10)(x)


class NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in ((64, 32), (32, 32))])
    self.out = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    for layer in self.layers:
      x = nnx.relu(layer(x))
    return self.out(x)


def _model(kind):
  """(apply(params, x), params, the target layer's kernel path)."""
  if kind == "linen":
    module = LinenMLP()
    params = module.init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
    return lambda p, x: module.apply({"params": p}, x), params, f"Dense_{TARGET}/kernel"
  graphdef, params = nnx.split(NnxMLP(nnx.Rngs(0)), nnx.Param)
  params = jax.tree.map(lambda v: v, params)
  return (lambda p, x: nnx.merge(graphdef, p)(x)), params, f"layers/{TARGET}/kernel"


@functools.lru_cache(maxsize=None)
def _trainer(kind):
  apply, params, target = _model(kind)
  names = leaf_names(params)
  tx = optax.sgd(0.05)
  recorder = gf.watch.FlightRecorder(window=64)
  hit = [n == target for n in names]

  @jax.jit
  def step(params, opt_state, rec, x, y, i, scale, boost, poison):
    leaves, tree = jax.tree.flatten(params)
    leaves = [jnp.where(poison & h & (jnp.arange(p.size).reshape(p.shape) == 0), jnp.nan, p)
              for p, h in zip(leaves, hit)]
    params = jax.tree.unflatten(tree, leaves)
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        apply(p, x * scale), y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.unflatten(tree, [u * jnp.where(h, boost, 1.0) for u, h in
                                        zip(jax.tree.leaves(updates), hit)])
    norms = gf.watch.step_norms(loss, grads, params, updates)
    rec = recorder.update(rec, i, norms)
    return optax.apply_updates(params, updates), opt_state, rec, norms, grads

  return params, names, target, tx, recorder, step


def _run(kind, fault):
  params, names, target, tx, recorder, step = _trainer(kind)
  data = gf.load_digits()
  opt_state, rec = tx.init(params), recorder.init(params)
  fired = []
  for i in range(STEPS):
    at = (i * 64) % (len(data.x_train) - 64)
    x, y = jnp.asarray(data.x_train[at:at + 64]), jnp.asarray(data.y_train[at:at + 64])
    scale = 1e4 if fault == "batch" and i == T else 1.0
    boost = 100.0 if fault == "lr" and i >= T else 1.0
    poison = fault == "nan" and i == T
    params, opt_state, rec, norms, grads = step(params, opt_state, rec, x, y, jnp.int32(i),
                                                scale, boost, poison)
    if bool(rec.new_trigger):
      fired.append(i)
  return rec, names, target, fired, (norms, grads)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
@pytest.mark.parametrize("fault", ["batch", "lr", "nan"])
def test_the_recorder_names_the_injected_fault(kind, fault, tmp_path):
  rec, names, target, fired, _ = _run(kind, fault)
  assert fired == [T], fired  # fired once, at the injected step, inside jit
  paths = gf.write_forensics(tmp_path, rec, names)
  report = json.loads(open(paths[0]).read())
  verdict = report["verdict"]
  assert report["trigger"]["step"] == T and verdict["step"] == T, verdict
  if fault == "batch":
    assert verdict["culprit"] == "data", verdict
  elif fault == "lr":
    assert verdict["culprit"] == "leaves" and verdict["leaves"] == [target], verdict
    assert report["ranking"][0] == target
  else:
    assert verdict["culprit"] == "parameters" and verdict["leaves"] == [target], verdict
    assert report["trigger"]["reasons"][0].startswith("non-finite loss, gradient or parameter")
  assert open(paths[1], "rb").read(4) == b"\x89PNG"


def test_nothing_fires_and_no_leaf_is_blamed_on_a_healthy_run():
  rec, names, _, fired, (norms, grads) = _run("linen", None)
  assert fired == [] and int(rec.fired_step) == -1
  report = gf.watch.analyse_forensics(rec, names)
  assert report["verdict"]["culprit"] == "none", report["verdict"]
  # the recorded norms of the last step are jnp.linalg.norm of jax.grad's leaves
  want = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  np.testing.assert_allclose(np.asarray(norms.grad_norm), want, rtol=1e-6)
  np.testing.assert_allclose(report["leaves"][0]["series"]["grad_norm"][-1], want[0], rtol=1e-6)
  assert list(report["steps"]) == list(range(STEPS))


def test_the_ring_buffer_keeps_the_last_window_steps_in_order():
  recorder = gf.watch.FlightRecorder(window=4, warmup=2)
  params = {"w": jnp.ones(3)}
  rec = recorder.init(params)
  update = jax.jit(recorder.update)
  for i in range(7):
    g = {"w": jnp.full(3, float(i + 1))}
    rec = update(rec, i, gf.watch.step_norms(1.0, g, params, g))
  steps, norms = gf.watch._forensics.window(rec)
  assert list(steps) == [3, 4, 5, 6]
  np.testing.assert_allclose(norms["grad_norm"][:, 0], np.sqrt(3) * np.arange(4, 8), rtol=1e-6)
  with pytest.raises(ValueError, match="window >= 2"):
    gf.watch.FlightRecorder(window=1)
  with pytest.raises(ValueError, match="warmup <= window"):
    gf.watch.FlightRecorder(window=4, warmup=5)
  assert gf.watch.FlightRecorder(window=8).warmup == 8


def test_recording_changes_nothing_in_the_training():
  """30 recorded steps give the bare loop's losses and parameters."""
  apply, params, _ = _model("linen")
  tx, recorder = optax.sgd(0.05), gf.watch.FlightRecorder(window=8)
  data = gf.load_digits()
  loss_fn = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

  @functools.partial(jax.jit, static_argnames="record")
  def step(params, opt_state, rec, x, y, i, record):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    if record:
      rec = recorder.update(rec, i, gf.watch.step_norms(loss, grads, params, updates))
    return optax.apply_updates(params, updates), opt_state, rec, loss

  runs = {}
  for record in (False, True):
    p, s, rec, losses = params, tx.init(params), recorder.init(params), []
    for i in range(30):
      at = (i * 64) % (len(data.x_train) - 64)
      p, s, rec, loss = step(p, s, rec, data.x_train[at:at + 64], data.y_train[at:at + 64],
                             jnp.int32(i), record)
      losses.append(float(loss))
    runs[record] = (losses, p)
  np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-6)
  chex.assert_trees_all_close(runs[True][1], runs[False][1], rtol=1e-5, atol=1e-7)


def test_the_cli_redraws_and_rereads_a_recorded_window(tmp_path, capsys):
  from gradflow_jax.cli import _cli
  rec, names, target, _, _ = _run("linen", "lr")
  json_path, png_path = gf.write_forensics(tmp_path / "run", rec, names)
  report = json.loads(open(json_path).read())
  again = gf.watch._forensics.analyse_window(*gf.watch._forensics.window_of_report(report))
  assert again["verdict"] == report["verdict"] and again["ranking"] == report["ranking"]
  assert _cli.main(["forensics", str(tmp_path / "run")]) == 0
  out = capsys.readouterr().out
  assert f"verdict: {target} moved first, at step {T}" in out
  assert _cli.main(["forensics", str(tmp_path / "run"), "--sigmas", "1e6", "--out",
                    str(tmp_path / "wide")]) == 0  # no band is ever left
  wide = json.loads((tmp_path / "wide" / "forensics.json").read_text())
  assert wide["verdict"]["culprit"] == "none" and wide["trigger"] == report["trigger"]
  assert (tmp_path / "wide" / "forensics.png").read_bytes()[:4] == b"\x89PNG"


def test_adam_health_against_moments_recomputed_from_the_gradients():
  """m-hat, v-hat, cos(m, g) and the epsilon-dominated share, from the state
  optax.adam left (found inside a chain and inside an nnx.Optimizer), against
  the moments recomputed in NumPy from the gradients of three steps; a leaf
  whose gradients are 1e-12 of the others' is epsilon-dominated everywhere."""
  b1, b2, eps = 0.9, 0.999, 1e-8
  params = {"big": jnp.ones((4, 3)), "tiny": jnp.ones(5)}
  tx = optax.chain(optax.clip_by_global_norm(1e9), optax.adam(1e-3, b1=b1, b2=b2, eps=eps))
  state = tx.init(params)
  history = []
  for i in range(3):
    g = {"big": jax.random.normal(jax.random.key(i), (4, 3)),
         "tiny": 1e-12 * jax.random.normal(jax.random.key(10 + i), (5,))}
    _, state = tx.update(g, state, params)
    history.append(g)
  health = jax.jit(lambda s, g: gf.watch.adam_health(s, g, b1=b1, b2=b2, eps=eps))(state, g)
  for i, name in enumerate(["big", "tiny"]):
    gs = [np.asarray(h[name], np.float64) for h in history]
    m = v = 0.0
    for gi in gs:
      m, v = b1 * m + (1 - b1) * gi, b2 * v + (1 - b2) * gi**2
    m_hat, v_hat = m / (1 - b1**3), v / (1 - b2**3)
    np.testing.assert_allclose(health.m_hat_norm[i], np.linalg.norm(m_hat), rtol=1e-5)
    np.testing.assert_allclose(health.v_hat_norm[i], np.linalg.norm(v_hat), rtol=1e-5)
    cos = np.sum(m * gs[-1]) / np.linalg.norm(m) / np.linalg.norm(gs[-1])
    np.testing.assert_allclose(health.cos_m_g[i], cos, rtol=1e-5)
    np.testing.assert_allclose(health.eps_dominated[i], np.mean(eps >= np.sqrt(v_hat)))
  assert float(health.eps_dominated[0]) == 0.0 and float(health.eps_dominated[1]) == 1.0
  # an nnx.Optimizer's state holds the same Adam state
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 3))) ** 2))(model)
  opt.update(model, grads)
  nnx_health = gf.watch.adam_health(opt.opt_state, nnx.state(grads))
  assert nnx_health.cos_m_g.shape == (2,)
  np.testing.assert_allclose(nnx_health.cos_m_g, 1.0, rtol=1e-6)  # one step: m = (1 - b1) g
  with pytest.raises(LookupError, match="one Adam state"):
    gf.watch.adam_health(optax.sgd(0.1).init(params), params)


def test_weight_spectra_follow_the_svd_of_each_matrix():
  """Persistent power iteration: after 60 one-pair updates on fixed weights,
  sigma_max of a dense kernel, a convolution kernel (flattened to fan_in x
  fan_out) and a rank-one matrix equals np.linalg.svd's to 1e-3 and is
  marked converged; biases are NaN; the stable rank is ||W||_F^2 / sigma^2.
  Then the weights move (x3) and the kept vectors follow in a few updates."""
  k = jax.random.split(jax.random.key(0), 4)
  params = {"dense": jax.random.normal(k[0], (16, 12)), "bias": jnp.ones(12),
            "conv": jax.random.normal(k[1], (3, 3, 4, 8)),
            "rank1": jnp.outer(jax.random.normal(k[2], (10,)), jax.random.normal(k[3], (6,)))}
  spectra = gf.watch.WeightSpectra()
  state = spectra.init(params, jax.random.key(1))
  update = jax.jit(spectra.update)
  for _ in range(60):
    state = update(state, params)
  names = leaf_names(params)
  for name, w in params.items():
    i = names.index(name)
    if w.ndim == 1:
      assert np.isnan(float(state.sigma[i]))
      continue
    m = np.asarray(w, np.float64).reshape(-1, w.shape[-1])
    sv = np.linalg.svd(m, compute_uv=False)
    np.testing.assert_allclose(float(state.sigma[i]), sv[0], rtol=1e-3, err_msg=name)
    assert bool(spectra.converged(state)[i]), name
    np.testing.assert_allclose(float(gf.watch.stable_ranks(params, state.sigma)[i]),
                               np.sum(sv**2) / sv[0] ** 2, rtol=2e-3)
  moved = jax.tree.map(lambda w: 3 * w, params)
  for _ in range(3):
    state = update(state, moved)
  i = names.index("dense")
  want = 3 * np.linalg.svd(np.asarray(params["dense"], np.float64), compute_uv=False)[0]
  np.testing.assert_allclose(float(state.sigma[i]), want, rtol=1e-3)


class Branches(nn.Module):
  """A branch whose input is scaled by 1e-12: its kernel's gradients are near zero."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(32)(x))
    return nn.Dense(10)(h) + nn.Dense(10, name="quiet")(1e-12 * h)


def test_a_too_small_adam_epsilon_on_near_zero_gradients_is_named_with_its_cause(tmp_path):
  """Adam's epsilon set to 1e-30 from step T: the quiet branch's near-zero
  gradients become full-size steps. No trigger fires (the loss barely
  moves), yet the window, written at the end, names that kernel and step,
  and the optimizer tier gives the cause."""
  module = Branches()
  params = module.init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, eps=1e-8)
  recorder = gf.watch.FlightRecorder(window=64)
  loss_fn = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(
      module.apply({"params": p}, x), y).mean()

  @jax.jit
  def step(params, opt_state, rec, x, y, i):
    eps = jnp.where(i >= T, 1e-30, 1e-8)
    opt_state.hyperparams["eps"] = eps
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    rec = recorder.update(rec, i, gf.watch.step_norms(loss, grads, params, updates),
                          gf.watch.adam_health(opt_state, grads, eps=eps))
    return optax.apply_updates(params, updates), opt_state, rec

  data = gf.load_digits()
  opt_state, rec = tx.init(params), recorder.init(params, adam=True)
  for i in range(STEPS):
    at = (i * 64) % (len(data.x_train) - 64)
    params, opt_state, rec = step(params, opt_state, rec, data.x_train[at:at + 64],
                                  data.y_train[at:at + 64], jnp.int32(i))
  assert int(rec.fired_step) == -1
  report = json.loads(open(gf.write_forensics(tmp_path, rec, params)[0]).read())
  verdict = report["verdict"]
  assert verdict["culprit"] == "leaves" and verdict["leaves"] == ["quiet/kernel"], verdict
  assert verdict["step"] == T and report["ranking"][0] == "quiet/kernel"
  assert "epsilon dominated sqrt(v-hat) on 100% of its coordinates before and 0%" in \
      verdict["text"], verdict["text"]
  again = gf.watch._forensics.analyse_window(*gf.watch._forensics.window_of_report(report))
  assert again["verdict"] == verdict  # the optimizer tier survives the JSON round trip
  with pytest.raises(ValueError, match="adam=True"):
    recorder.update(rec, 0, gf.watch.step_norms(0.0, params, params, params))
