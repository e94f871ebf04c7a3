"""The monitored step (gf.value_and_grad / gf.nnx_value_and_grad) against
independent references: jax.grad of the plain loss, NumPy on tensors Flax
captures itself, a plain nnx.value_and_grad training run, explicit
perturbations of a scan over layers."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import gradflow_jax as gf
from gradflow_jax.measure import _rows
from gradflow_jax.watch import _flow_step
from helpers import read_event_file, tol


class _LinenNet(nn.Module):
  """Dropout and BatchNorm in training mode: the everyday model."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(nn.Dense(16)(x))
    x = nn.Dropout(0.25, deterministic=not train)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(3)(x)


def _batch(n=8, d=5, seed=0):
  x = jax.random.normal(jax.random.key(seed), (n, d))
  return x, jnp.arange(n) % 3


def _ce(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@pytest.fixture(scope="module")
def linen_case():
  m = _LinenNet()
  x, y = _batch()
  v = m.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)

  def loss_fn(p, bs, x, y, key):
    out, upd = m.apply({"params": p, "batch_stats": bs}, x, mutable=["batch_stats"],
                       rngs={"dropout": key})
    return _ce(out, y), upd
  step = jax.jit(gf.value_and_grad(loss_fn, has_aux=True, activations={"Dense_0": "relu"},
                                   histograms=True))
  key = jax.random.key(3)
  return m, v, x, y, key, loss_fn, step(v["params"], v["batch_stats"], x, y, key)


def test_linen_step_gives_jax_grad_and_flax_updates(linen_case):
  m, v, x, y, key, loss_fn, ((loss, upd), grads, flow) = linen_case
  (ref_loss, ref_upd), ref = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      v["params"], v["batch_stats"], x, y, key)
  np.testing.assert_allclose(loss, ref_loss, **tol())
  chex.assert_trees_all_close(grads, ref, **tol())
  chex.assert_trees_all_close(upd, ref_upd, **tol())
  assert flow.names == ("Dense_0", "BatchNorm_0/input", "Dense_1/input", "Dense_1")
  assert flow.roles == ("pre", "tap", "post", "pre")
  assert flow.activation_names == ("relu", None, None, None)
  assert bool(flow.measured)
  leaves = jax.tree.leaves(ref)
  np.testing.assert_allclose(flow.global_norm, np.sqrt(sum(np.sum(np.square(g)) for g in leaves)),
                             **tol())
  jax.tree.map(lambda n, g: np.testing.assert_allclose(n, np.linalg.norm(np.ravel(g)), **tol()),
               flow.param_grad_norms, ref)


def test_linen_tap_statistics_match_numpy_on_flax_captured_tensors(linen_case):
  m, v, x, y, key, loss_fn, (_, _, flow) = linen_case
  _, state = m.apply(v, x, mutable=["batch_stats", "intermediates"], rngs={"dropout": key},
                     capture_intermediates=True)
  inter = state["intermediates"]
  z0 = np.asarray(inter["Dense_0"]["__call__"][0], np.float64)
  out = np.asarray(inter["Dense_1"]["__call__"][0], np.float64)
  a = flow.activations
  np.testing.assert_allclose(a.mean[0], z0.mean(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a.std[0], z0.std(ddof=1), rtol=1e-5)
  np.testing.assert_allclose(a.min[0], z0.min(), rtol=1e-6)
  np.testing.assert_allclose(a.max[0], z0.max(), rtol=1e-6)
  # relu's tests on its input: a unit is dead when z <= 0 on every example
  np.testing.assert_allclose(a.dead_fraction[0], np.mean(np.all(z0 <= 0, axis=0)))
  np.testing.assert_allclose(a.saturation_fraction[0], 0.0)  # relu has no flat tail above
  assert np.isnan(a.saturation_fraction[3])  # no activation known: no saturation test
  # dL/dlogits of a mean cross-entropy is (softmax - onehot) / batch
  p = np.exp(out - out.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  d = (p - np.eye(3)[np.asarray(y)]) / len(y)
  np.testing.assert_allclose(flow.tap_grad_norm[3], np.linalg.norm(d), rtol=1e-5)


def test_histograms_are_numpy_histograms_of_the_same_bins(linen_case):
  m, v, x, y, key, loss_fn, (_, _, flow) = linen_case
  _, state = m.apply(v, x, mutable=["batch_stats", "intermediates"], rngs={"dropout": key},
                     capture_intermediates=True)
  z0 = np.asarray(state["intermediates"]["Dense_0"]["__call__"][0]).ravel()
  h = flow.histograms["act/Dense_0"]
  edges = gf.watch.HISTOGRAM_EDGES
  ref, _ = np.histogram(np.clip(z0, edges[0], edges[-1]), bins=edges)
  np.testing.assert_array_equal(h.counts, ref)
  assert int(h.counts.sum()) == z0.size
  np.testing.assert_allclose([h.min, h.max, h.sum, h.sum_squares],
                             [z0.min(), z0.max(), z0.sum(), np.sum(z0.astype(np.float64) ** 2)],
                             rtol=1e-5, atol=1e-5)
  assert set(flow.histograms) == {f"{k}/{n}" for k in ("act", "grad") for n in flow.names}


def test_a_flow_step_is_a_few_stacked_arrays_whatever_the_model_size(linen_case):
  """Each array a jitted step returns costs the host per call: a FlowStep's
  leaves are a few stacked arrays, not one per statistic, tap or parameter; its
  attributes are views of them, on the device and after ``device_get``
  (five leaves, and five more for the histograms of every tap together)."""
  m, v, x, y, key, loss_fn, (_, grads, flow) = linen_case
  assert len(jax.tree.leaves(flow)) == 5 + len(dataclasses.fields(_flow_step.Histogram))
  host = jax.device_get(flow)
  for f in (flow, host):
    n = len(f.names)
    assert n >= 4 and f.tap_grad_norm.shape == (n,)
    assert all(getattr(f.activations, k).shape == (n,) for k in _rows.ActivationStats._fields)
    assert jax.tree.structure(f.param_grad_norms) == jax.tree.structure(grads)
  np.testing.assert_allclose(jax.tree.leaves(host.param_grad_norms),
                             [np.linalg.norm(np.asarray(g)) for g in jax.tree.leaves(grads)],
                             rtol=1e-5)
  assert float(host.global_norm) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-5)
  assert host.activations.nonfinite.dtype == np.int32
  assert np.asarray(host.histograms["grad/Dense_0"].counts).sum() == x.shape[0] * 16


def test_nonfinite_entries_are_counted_and_left_out_of_histograms():
  x = jnp.array([[1.0, jnp.nan, 3.0, jnp.inf]])
  h = gf.watch.histogram(x)
  assert int(h.counts.sum()) == 2 and float(h.min) == 1.0 and float(h.max) == 3.0

  def loss_fn(p, x):
    return jnp.sum(gf.tap("h", x * p))
  loss, _, flow = jax.jit(gf.value_and_grad(loss_fn))(jnp.float32(2.0), x)
  assert int(flow.activations.nonfinite[0]) == 2 and not np.isfinite(loss)


def test_every_skips_statistics_but_never_gradients():
  """every=3: steps 0 and 3 measured, 1 and 2 NaN with measured=False; the
  gradients are those of every=1 on every step, and the step is traced once."""
  traces = []
  w = {"w1": jnp.ones((5, 4)) * 0.3, "w2": jnp.ones((4, 3)) * 0.2}
  x, y = _batch()

  def loss_fn(p, x, y):
    traces.append(1)
    h = gf.tap("h", jnp.tanh(gf.tap("z", x @ p["w1"], activation="tanh")))
    return _ce(h @ p["w2"], y)
  every3 = jax.jit(gf.value_and_grad(loss_fn, every=3))
  every1 = jax.jit(gf.value_and_grad(loss_fn))
  ref_loss, ref_grads, ref_flow = every1(w, x, y)
  flows = []
  for step in range(4):
    loss, grads, flow = every3(w, x, y, step=jnp.int32(step))
    flows.append(jax.device_get(flow))
    np.testing.assert_allclose(loss, ref_loss)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-7)
    assert bool(flow.measured) == (step % 3 == 0)
    if step % 3 == 0:
      np.testing.assert_allclose(flow.tap_grad_norm, ref_flow.tap_grad_norm)
      np.testing.assert_allclose(flow.activations.std, ref_flow.activations.std)
    else:
      assert np.all(np.isnan(flow.tap_grad_norm)) and np.isnan(flow.global_norm)
  # the notebook figure of those steps: measured columns drawn, skipped ones blank
  fig = gf.plots.tap_gradients_over_steps(range(4), flows)
  image = fig.axes[0].images[0].get_array()
  np.testing.assert_allclose(image[:, 0], np.log10(ref_flow.tap_grad_norm), rtol=1e-5)
  assert np.ma.getmaskarray(image)[:, 1:3].all() or np.isnan(image[:, 1:3]).all()
  n_traces = len(traces)
  every3(w, x, y, step=jnp.int32(7))
  assert len(traces) == n_traces  # a new step number does not retrace
  # measure= (static): False is the plain step with no statistics at all
  static = jax.jit(gf.value_and_grad(loss_fn, every=3), static_argnames="measure")
  loss, grads, flow = static(w, x, y, measure=False)
  np.testing.assert_allclose(loss, ref_loss)
  chex.assert_trees_all_close(grads, ref_grads, rtol=1e-7)
  assert not bool(flow.measured) and flow.activations is None and flow.param_grad_norms is None
  assert gf.watch.flat_metrics(flow) == {"loss": float(ref_loss)}
  _, _, flow = static(w, x, y, measure=True)
  np.testing.assert_allclose(flow.tap_grad_norm, ref_flow.tap_grad_norm)
  with pytest.raises(ValueError, match="Python bool"):
    gf.value_and_grad(loss_fn)(w, x, y, measure=jnp.bool_(True))


def test_every_on_a_scanned_model_skips_the_whole_tapped_pass():
  """A scanned model's off-steps run the plain value_and_grad under the cond
  (an unrolled model's run the tapped pass, above): the same gradients, and
  the measured step equals every=1."""
  w = jnp.stack([jnp.eye(5) * 0.9, jnp.eye(5) * 1.1]) + 0.01
  x, y = _batch()

  def loss_fn(p, x, y):
    def layer(h, wl):
      return jnp.tanh(gf.tap("z", h @ wl, activation="tanh")), None
    h, _ = jax.lax.scan(layer, x, p)
    return _ce(h[:, :3], y)
  every2 = jax.jit(gf.value_and_grad(loss_fn, every=2))
  ref_loss, ref_grads, ref_flow = jax.jit(gf.value_and_grad(loss_fn))(w, x, y)
  assert ref_flow.names == ("z/layer_0", "z/layer_1")
  for step in range(2):
    loss, grads, flow = every2(w, x, y, step=jnp.int32(step))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(grads, ref_grads, rtol=1e-6)
    assert bool(flow.measured) == (step == 0)
    if step == 0:
      np.testing.assert_allclose(flow.stats, ref_flow.stats, rtol=1e-6)
    else:
      assert np.isnan(flow.stats).all() and np.isnan(flow.norms).all()


def test_taps_through_a_scan_over_layers_match_explicit_perturbations():
  """gf.tap inside lax.scan: one tap per layer, ||dL/dh_l|| equal to jax.grad
  with respect to explicit additive perturbations."""
  depth, width = 4, 6
  ws = jax.random.normal(jax.random.key(0), (depth, width, width)) / np.sqrt(width)
  x = jax.random.normal(jax.random.key(1), (3, width))

  def loss_fn(ws, x):
    def layer(h, w):
      return gf.tap("h", jnp.tanh(h @ w)), None
    h, _ = jax.lax.scan(layer, x, ws)
    return jnp.sum(h ** 2)

  def explicit(eps, ws, x):
    def layer(h, we):
      w, e = we
      return jnp.tanh(h @ w) + e, None
    h, _ = jax.lax.scan(layer, x, (ws, eps))
    return jnp.sum(h ** 2)
  _, _, flow = jax.jit(gf.value_and_grad(loss_fn))(ws, x)
  ref = jax.grad(explicit)(jnp.zeros((depth, 3, width)), ws, x)
  assert flow.names == tuple(f"h/layer_{i}" for i in range(depth))
  np.testing.assert_allclose(flow.tap_grad_norm, np.linalg.norm(ref.reshape(depth, -1), axis=1),
                             **tol())


def test_the_monitored_step_returns_model_flow_stats_statistics():
  """One statistics type: a step's ``flow_stats`` is a ModelFlowStats equal
  (to float32 rounding) to gf.model_flow_stats of the same model and batch."""
  ws = jax.random.normal(jax.random.key(0), (3, 6, 6)) / np.sqrt(6.0)
  x, y = jax.random.normal(jax.random.key(1), (5, 6)), jnp.arange(5) % 6

  def net(ws, x):
    for w in ws:
      x = jnp.tanh(gf.tap("z", x @ w, role="pre", activation="tanh"))
    return x
  _, _, flow = jax.jit(gf.value_and_grad(
      lambda ws, x, y: gf.loss_value("cross_entropy", net(ws, x), y)))(ws, x, y)
  got, want = flow.flow_stats, gf.model_flow_stats(gf.probed(net, ws), x, y)
  assert isinstance(got, gf.types.ModelFlowStats)
  assert got.names == want.names == ("z", "z#2", "z#3")
  assert (got.roles, got.activation_names) == (want.roles, want.activation_names)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol()),
               got[3:], tuple(want[3:]))


class _NNXNet(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(5, 16, rngs=rngs)
    self.drop = nnx.Dropout(0.25, rngs=rngs)
    self.bn = nnx.BatchNorm(16, rngs=rngs)
    self.l2 = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.l2(self.bn(self.drop(jnp.tanh(self.l1(x)))))


def _nnx_loss(model, x, y):
  return _ce(model(x), y)


def test_nnx_optimizer_run_equals_a_plain_nnx_value_and_grad_run():
  """Three nnx.Optimizer steps under nnx.jit with Dropout (the model's own
  rngs) and BatchNorm in training mode: parameters, batch statistics and
  losses equal those of the same loop written with nnx.value_and_grad."""
  x, y = _batch()
  ours, ref = _NNXNet(nnx.Rngs(0, dropout=1)), _NNXNet(nnx.Rngs(0, dropout=1))
  opt_ours = nnx.Optimizer(ours, optax.adam(1e-2), wrt=nnx.Param)
  opt_ref = nnx.Optimizer(ref, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step_ours(model, opt, x, y):
    loss, grads, flow = gf.nnx_value_and_grad(_nnx_loss, activations={"l1": "tanh"})(model, x, y)
    opt.update(model, grads)
    return loss, flow

  @nnx.jit
  def step_ref(model, opt, x, y):
    loss, grads = nnx.value_and_grad(_nnx_loss)(model, x, y)
    opt.update(model, grads)
    return loss

  for _ in range(3):
    loss, flow = step_ours(ours, opt_ours, x, y)
    np.testing.assert_allclose(loss, step_ref(ref, opt_ref, x, y), **tol())
  def same(a, b):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_allclose(a, b, **tol())
  jax.tree.map(same, nnx.state(ours), nnx.state(ref))
  assert flow.names == ("l1", "bn/input", "l2/input", "l2")
  assert flow.activation_names[0] == "tanh" and 0.0 <= float(
      flow.activations.saturation_fraction[0]) <= 1.0
  assert type(ours.l1) is nnx.Linear  # the user's model keeps its classes
  flat = gf.watch.flat_metrics(flow)
  assert flat["grad_norm/l1/kernel"] == float(flow.param_grad_norms["l1"]["kernel"][...])
  assert not [k for k in flat if k.endswith("/value")]  # NNX Variables named by their path


class UpdateRatiosTest(chex.TestCase):
  """update_ratios against NumPy, jitted and not (chex.variants), with the
  traced ``when`` switch both ways."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_update_ratios_match_numpy(self):
    old = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    new = {"a": old["a"] * 1.01, "b": old["b"] + 0.5}
    want = {k: np.linalg.norm(np.asarray(new[k]) - np.asarray(old[k])) / np.linalg.norm(old[k])
            for k in old}
    ratios = self.variant(gf.watch.update_ratios)
    got = ratios(old, new)
    chex.assert_trees_all_close(got, want, rtol=1e-5)
    chex.assert_trees_all_close(want, {"a": 0.01, "b": 0.5}, rtol=1e-5)
    skipped = ratios(old, new, when=jnp.asarray(False))
    chex.assert_tree_shape_suffix(skipped, ())
    assert all(np.isnan(v) for v in jax.tree.leaves(skipped))


def test_update_ratios_refuse_live_nnx_variables_and_take_a_snapshot():
  """nnx.state holds the model's live variables: after optimizer.update the
  'old' parameters are the new ones. Refused with the fix; a snapshot gives
  the ratios NumPy gives."""
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
  live, old = nnx.state(model, nnx.Param), gf.watch.snapshot(nnx.state(model, nnx.Param))
  kernel = np.asarray(model.kernel[...])
  optimizer.update(model, grads)
  with pytest.raises(ValueError, match="gf.watch.snapshot"):
    gf.watch.update_ratios(live, nnx.state(model, nnx.Param))
  r = gf.watch.update_ratios(old, nnx.state(model, nnx.Param))
  np.testing.assert_allclose(r["kernel"], 0.1 * np.sqrt(kernel.size) / np.linalg.norm(kernel),
                             rtol=1e-5)


def test_bad_arguments_are_clear_errors():
  f = lambda p, x: jnp.sum(p * x)
  with pytest.raises(ValueError, match="every"):
    gf.value_and_grad(f, every=0)
  with pytest.raises(ValueError, match="unknown activation"):
    gf.value_and_grad(f, activations={"h": "swishy"})
  with pytest.raises(ValueError, match="step="):
    gf.value_and_grad(f, every=2)(jnp.ones(2), jnp.ones(2))
  with pytest.raises(ValueError, match="scalar"):
    gf.value_and_grad(lambda p, x: p * x)(jnp.ones(2), jnp.ones(2))
  with pytest.raises(ValueError, match=r"\(loss, aux\)"):
    gf.value_and_grad(f, has_aux=True)(jnp.ones(2), jnp.ones(2))
  # a misspelled tap name is refused with the nearest names, never ignored
  tapped = lambda p, x: jnp.sum(gf.tap("blocks_0/fc_1", p * x))
  with pytest.raises(ValueError, match=r"'blocks/0/fc_1' \(did you mean 'blocks_0/fc_1'\?\)"):
    gf.value_and_grad(tapped, activations={"blocks/0/fc_1": "gelu"})(jnp.ones(2), jnp.ones(2))


def test_arguments_that_are_not_arrays_pass_through_as_in_jax_value_and_grad():
  """A linen TrainState (its apply_fn a function) or the function alone:
  whatever jax.value_and_grad accepts."""
  from flax.training import train_state
  m = nn.Dense(3)
  x, y = _batch(4)
  state = train_state.TrainState.create(apply_fn=m.apply, params=m.init(jax.random.key(0), x)[
      "params"], tx=optax.adam(1e-3))

  def loss(p, apply_fn, x, y):
    return _ce(apply_fn({"params": p}, x), y)
  want = jax.jit(jax.value_and_grad(loss), static_argnums=1)(state.params, state.apply_fn, x, y)
  got = jax.jit(gf.value_and_grad(loss), static_argnums=1)(state.params, state.apply_fn, x, y)
  np.testing.assert_allclose(got[0], want[0], **tol())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol()), got[1], want[1])
  whole = gf.value_and_grad(lambda p, st, x, y: loss(p, st.apply_fn, x, y))(
      state.params, state, x, y)
  np.testing.assert_allclose(whole[0], want[0], **tol())


def test_metrics_reach_jsonl_and_tensorboard_unchanged(linen_case, tmp_path):
  m, v, x, y, key, loss_fn, (_, grads, flow) = linen_case
  new = jax.tree.map(lambda p, g: p - 0.1 * g, v["params"], grads)
  ratios = gf.watch.update_ratios(v["params"], new)
  flat = gf.watch.flat_metrics(flow, ratios)
  assert flat["loss"] == float(flow.loss)
  assert flat["grad_norm/Dense_0/kernel"] == float(flow.param_grad_norms["Dense_0"]["kernel"])
  assert flat["act/dead/Dense_0"] == float(flow.activations.dead_fraction[0])
  assert flat["tap_grad_norm/Dense_1"] == float(flow.tap_grad_norm[3])
  assert "act/saturated/Dense_1" not in flat and "act/saturated/Dense_0" in flat
  # always-active units: for the ReLU tap only (NaN wherever no activation says what inactive is)
  assert flat["act/always_active/Dense_0"] == float(flow.activations.always_active_fraction[0])
  assert [k for k in flat if k.startswith("act/always_active/")] == ["act/always_active/Dense_0"]
  np.testing.assert_allclose(flat["update_ratio/Dense_1/kernel"],
                             0.1 * np.linalg.norm(grads["Dense_1"]["kernel"])
                             / np.linalg.norm(v["params"]["Dense_1"]["kernel"]), rtol=1e-5)
  with gf.watch.JsonlWriter(tmp_path / "log.jsonl") as w:
    gf.log_step(w, 7, flow, ratios)
  records = gf.watch.read_jsonl(tmp_path / "log.jsonl")
  assert records[0]["histogram_edges"] == gf.watch.HISTOGRAM_EDGES.tolist()
  assert records[1]["step"] == 7 and set(records[1]["scalars"]) == set(flat)
  for k, val in flat.items():  # strict JSON: a non-finite value is written as null
    assert records[1]["scalars"][k] == val or (np.isnan(records[1]["scalars"][k])
                                               and not np.isfinite(val)), k
  hist = {r["histogram"]: r for r in records[2:]}
  assert hist["act/Dense_0"]["counts"] == np.asarray(flow.histograms["act/Dense_0"].counts).tolist()

  with gf.watch.TensorBoardWriter(tmp_path / "tb") as w:
    gf.log_step(w, 7, flow, ratios)
  events = read_event_file(tmp_path / "tb")
  scalars = {tag: val for tag, step, val in events if not hasattr(val, "bucket")}
  assert {tag for tag in scalars} == set(flat) and all(s == 7 for _, s, _ in events)
  for tag, val in scalars.items():
    np.testing.assert_allclose(val, flat[tag], rtol=1e-7)  # inf stays inf
  histo = {tag: val for tag, _, val in events if hasattr(val, "bucket")}
  assert sum(histo["act/Dense_0"].bucket) == 8 * 16
  np.testing.assert_allclose(histo["act/Dense_0"].max, flow.histograms["act/Dense_0"].max)


class _Recorder:
  """A CLU-style writer (write_scalars only): what wandb/CLU adapters look like."""

  def __init__(self):
    self.calls = []

  def write_scalars(self, step, scalars):
    self.calls.append((step, dict(scalars)))


def test_step_logger_writes_each_step_once_one_step_late_and_the_last_on_exit(tmp_path):
  """StepLogger holds a step back until the next is logged (the host then
  reads a finished step), writes the same lines as log_step, and loses no
  step when the loop stops early."""
  w = {"w1": jnp.ones((5, 4)) * 0.3}
  x, y = _batch()
  step = jax.jit(gf.value_and_grad(lambda p, x, y: _ce(gf.tap("h", x @ p["w1"])[:, :3], y)))
  flows = [step(jax.tree.map(lambda a, k=k: a * (1 + k), w), x, y)[2] for k in range(3)]

  class Memory:
    def __init__(self):
      self.lines, self.closed = [], False

    def write_scalars(self, step, scalars):
      self.lines.append((step, scalars))

    def close(self):
      self.closed = True
  memory = Memory()
  with pytest.raises(RuntimeError):
    with gf.StepLogger(memory, gf.watch.JsonlWriter(tmp_path / "log.jsonl")) as log:
      for k, f in enumerate(flows):
        log(10 * k, f)
        assert [s for s, _ in memory.lines] == [10 * j for j in range(k)]  # one step late
      raise RuntimeError("the loop stops")
  assert memory.closed and log.last[0] == 20
  assert memory.lines == [(10 * k, gf.watch.flat_metrics(f)) for k, f in enumerate(flows)]
  records = [r for r in gf.watch.read_jsonl(tmp_path / "log.jsonl") if "scalars" in r]
  assert [r["step"] for r in records] == [0, 10, 20]
  assert records[2]["scalars"]["tap_grad_norm/h"] == pytest.approx(
      float(flows[2].tap_grad_norm[0]), rel=1e-6)


def test_skipped_steps_log_only_the_loss_to_any_writer():
  w = {"w": jnp.ones((5, 3)) * 0.1}
  x, y = _batch()
  f = jax.jit(gf.value_and_grad(lambda p, x, y: _ce(gf.tap("out", x @ p["w"]), y), every=2))
  rec = _Recorder()
  for step in range(2):
    _, _, flow = f(w, x, y, step=step)
    gf.log_step(rec, step, flow)
  assert set(rec.calls[0][1]) > {"loss", "grad_norm/global", "act/std/out"}
  assert set(rec.calls[1][1]) == {"loss"}
  assert "<table>" in flow._repr_html_() or "not measured" in flow._repr_html_()


def test_stop_if_nonfinite_keeps_the_last_finite_parameters_for_good():
  """A NaN gradient at step 2 of plain SGD with momentum: from then on no
  update, the momentum frozen; the parameters are those after step 1."""
  tx = gf.watch.stop_if_nonfinite(optax.chain(gf.watch.gradient_flow_monitor(), optax.sgd(0.1, 0.9)))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  grads = [jnp.full(3, 1.0), jnp.full(3, 2.0), jnp.array([1.0, jnp.nan, 1.0]), jnp.full(3, 1.0)]
  history = []
  update = jax.jit(tx.update)
  for g in grads:
    updates, state = update({"w": g}, state, params)
    params = optax.apply_updates(params, updates)
    history.append((params["w"], bool(gf.watch.stopped(state))))
  # numpy SGD with momentum for the two good steps
  w, m = np.ones(3), np.zeros(3)
  for g in (1.0, 2.0):
    m = 0.9 * m + g
    w = w - 0.1 * m
  np.testing.assert_allclose(history[1][0], w, rtol=1e-6)
  assert [s for _, s in history] == [False, False, True, True]
  np.testing.assert_array_equal(history[3][0], history[1][0])
  reading = gf.watch.find_monitor_state(state)
  assert int(reading.count) == 2 and not bool(reading.nonfinite)  # frozen at the last good step


def test_monitor_state_keeps_its_structure_from_init_so_a_scan_can_carry_it():
  tx = optax.chain(gf.watch.gradient_flow_monitor(), optax.adam(1e-2))
  params = {"w": jnp.ones(4)}

  def body(carry, g):
    p, s = carry
    u, s = tx.update({"w": g}, s, p)
    return (optax.apply_updates(p, u), s), optax.tree.get(s, "gradflow/global_norm")
  gs = jnp.arange(12.0).reshape(3, 4)
  (_, state), norms = jax.lax.scan(body, (params, tx.init(params)), gs)
  np.testing.assert_allclose(norms, np.linalg.norm(np.asarray(gs), axis=1), rtol=1e-6)
  moments = gf.watch.moment_norms(state)
  mu = np.zeros(4)
  nu = np.zeros(4)
  for g in np.asarray(gs):
    mu, nu = 0.9 * mu + 0.1 * g, 0.999 * nu + 0.001 * g * g
  np.testing.assert_allclose(moments["mu"]["w"], np.linalg.norm(mu), rtol=1e-5)
  np.testing.assert_allclose(moments["nu"]["w"], np.linalg.norm(nu), rtol=1e-5)


@pytest.mark.parametrize("name", ["watch_nnx", "watch_linen", "watch_optax"])
def test_training_examples_train_200_steps_on_digits_with_tensorboard(name, tmp_path):
  """Each examples/watch_*.py trains 200 steps on digits in its own loop
  (nnx.Optimizer, a linen TrainState, a plain optax chain), logging every
  10th step to JSON Lines and TensorBoard; the loss falls, and TensorBoard
  holds exactly what the JSON Lines file holds."""
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(__file__), "..", "examples", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  log = module.main(steps=200, out=str(tmp_path), every=10, tensorboard=str(tmp_path / "tb"))
  records = [r for r in gf.watch.read_jsonl(log) if "scalars" in r]
  assert [r["step"] for r in records] == list(range(0, 200, 10))
  for r in records:
    s = r["scalars"]
    assert np.isfinite(s["loss"]) and np.isfinite(s["grad_norm/global"])
    ratios = [v for k, v in s.items() if k.startswith("update_ratio/")]
    assert any(k.startswith("act/std/") for k in s) and ratios
    # an update moves every weight (a ratio of 0 read the updated weights
    # twice); zero-initialised biases have no ratio at step 0 (||old|| = 0)
    assert all(v != 0 if r["step"] == 0 else v > 0 for v in ratios), ratios
  assert records[-1]["scalars"]["loss"] < 0.5 * records[0]["scalars"]["loss"]
  events = read_event_file(tmp_path / "tb")
  for tag in ("loss", "grad_norm/global"):
    logged = [(step, v) for t, step, v in events if t == tag]
    assert logged == [(r["step"], pytest.approx(r["scalars"][tag], rel=1e-6)) for r in records]


def test_a_tap_named_prelu_without_its_slope_uses_the_default_slope():
  """Named by the user (no slope known): PReLU's default slope a > 0 passes
  gradient everywhere, so no unit is dead and every unit is always active;
  with a ReLU-like a = 0 test, the negative units here would be dead."""
  p = jnp.asarray([[1.0, -1.0, 2.0, -3.0]] * 3)
  f = lambda p, x: jnp.sum(gf.tap("h", x @ p, role="pre"))
  flow = gf.value_and_grad(f, activations={"h": "prelu"})(p, jnp.ones((2, 3)))[2]
  assert float(flow.activations.dead_fraction[0]) == 0.0
  assert float(flow.activations.always_active_fraction[0]) == 1.0
  assert gf.watch.flat_metrics(flow)["act/always_active/h"] == 1.0
  relu = gf.value_and_grad(f, activations={"h": "relu"})(p, jnp.ones((2, 3)))[2]
  assert float(relu.activations.dead_fraction[0]) == 0.5


def test_promised_zero_perturbations_give_the_same_gradients_and_skip_the_forward_read():
  """With ``how="tangent"`` (the monitored step) a tap adds only
  its perturbation's tangent: gradients equal those of ``x + p`` bit for bit
  (through a scan and a checkpointed body), and the forward pass ignores p."""
  from gradflow_jax.capture import _probed as _probe
  ws = jax.random.normal(jax.random.key(0), (3, 5, 5)) / np.sqrt(5)
  x = jax.random.normal(jax.random.key(1), (2, 5))

  def fn(ws, x):
    @jax.checkpoint
    def layer(h, w):
      return gf.tap("h", jnp.tanh(h @ w)), None
    h, _ = jax.lax.scan(layer, gf.tap("x", x * 2.0), ws)
    return jnp.sum(h ** 3)
  model = gf.probed(fn, ws)
  shapes = _probe.discover_taps(model, x).shapes
  assert sorted(shapes) == ["h/layer_0", "h/layer_1", "h/layer_2", "x"]

  def value_and_grads(p, how="add"):
    return jax.value_and_grad(lambda w, p: model.forward(w, x, p, how=how)[0],
                              argnums=(0, 1))(ws, p)
  zeros = _probe.zero_perturbations(shapes)
  want = jax.jit(value_and_grads)(zeros)
  got = jax.jit(functools.partial(value_and_grads, how="tangent"))(zeros)
  ones = jax.tree.map(jnp.ones_like, zeros)
  moved = jax.jit(lambda p: model.forward(ws, x, p, how="tangent")[0])(ones)
  chex.assert_trees_all_equal(got, want)
  assert float(moved) == float(want[0])
  assert float(model.forward(ws, x, ones)[0]) != float(want[0])  # outside: p moves it


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_norm_slots_give_each_taps_squared_gradient_norm(dtype):
  """With ``how="norms"`` the gradient with
  respect to a tap's scalar slot is ||dL/d tap||^2, per layer of a scan and
  through a checkpointed body, as float32 for bfloat16 taps. The reference
  is jax.grad with respect to full perturbations, in float32 on the same
  (rounded) weights and inputs. bfloat16 keeps 8 significant bits: each of
  the 5 rounding stages (x * 2, three layers, the cube) moves a squared norm
  by up to 2 * 2**-8 relative, whose sum is the tolerance."""
  from gradflow_jax.capture import _probed as _probe
  ws = (jax.random.normal(jax.random.key(0), (3, 5, 5)) / np.sqrt(5)).astype(dtype)
  x = jax.random.normal(jax.random.key(1), (2, 5)).astype(dtype)

  def fn(ws, x):
    @jax.checkpoint
    def layer(h, w):
      return gf.tap("h", jnp.tanh(h @ w)), None
    h, _ = jax.lax.scan(layer, gf.tap("x", x * 2), ws)
    return jnp.sum(h.astype(jnp.float32) ** 3)

  def grad(ws, x, p, how="add"):
    return jax.grad(lambda p: gf.probed(fn, ws).forward(ws, x, p, how=how)[0])(p)
  shapes = _probe.discover_taps(gf.probed(fn, ws), x).shapes
  full = jax.jit(grad)(ws.astype(jnp.float32), x.astype(jnp.float32),
                       _probe.zero_perturbations({k: jax.ShapeDtypeStruct(v.shape, jnp.float32)
                                                  for k, v in shapes.items()}))
  slots = jax.jit(functools.partial(grad, how="norms"))(ws, x, _probe.norm_slots(shapes))
  assert set(shapes) == {"x", "h/layer_0", "h/layer_1", "h/layer_2"}
  assert set(slots) == {"x", "h/layer_*"}  # the scanned tap's layers share a slot
  squares = dict(zip(shapes, _probe.slot_values(slots, list(shapes))))
  rtol = 1e-6 if dtype == jnp.float32 else 5 * 2 * 2**-8
  for name, g in full.items():
    assert squares[name].dtype == jnp.float32 and squares[name].shape == ()
    want = np.sum(np.asarray(g, np.float64) ** 2)
    assert want > 0
    np.testing.assert_allclose(float(squares[name]), want, rtol=rtol, err_msg=name)


def test_a_vmapped_steps_flow_step_reads_each_seed_in_place():
  """vmap over seeds of the monitored step of a scan: every view of the
  batched FlowStep (activations, tap and parameter gradient norms, global
  norm, histograms) has the seed axis in front and equals that seed's own
  step."""
  def loss_fn(ws, x):
    def layer(h, w):
      return gf.tap("h", jnp.tanh(h @ w)), None
    h, _ = jax.lax.scan(layer, x, ws)
    return jnp.sum(h ** 2)
  watched = gf.value_and_grad(loss_fn, histograms=True)
  ws = jax.random.normal(jax.random.key(0), (3, 2, 4, 4)) / 2
  x = jax.random.normal(jax.random.key(1), (3, 4))
  batched = jax.device_get(jax.jit(jax.vmap(lambda w: watched(w, x)))(ws)[2])
  step = jax.jit(watched)
  for seed in range(3):
    one = jax.device_get(step(ws[seed], x)[2])
    views = lambda f: [f.tap_grad_norm, f.global_norm, f.activations.std, f.activations.mean,
                       f.activations.nonfinite, *jax.tree.leaves(f.param_grad_norms),
                       *jax.tree.leaves(f.histograms)]
    want = views(one)
    got = views(batched)
    assert len(got) == len(want)
    for g, w in zip(got, want):
      assert g.shape == (3,) + np.shape(w)
      np.testing.assert_allclose(g[seed], w, rtol=1e-5, atol=1e-6)


def test_help_of_the_monitored_steps_names_every_argument():
  """help() shows every argument of the factory and of the step it returns
  (measure= was missing from nnx_value_and_grad's)."""
  import inspect
  for factory in (gf.value_and_grad, gf.nnx_value_and_grad):
    doc = inspect.getdoc(factory)
    step = factory(lambda *a: 0.0)
    names = (set(inspect.signature(factory).parameters) | set(inspect.signature(step).parameters))
    missing = {n for n in names - {"args", "a"} if n not in doc}
    assert not missing, (factory.__name__, missing)
