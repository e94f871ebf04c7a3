"""Statistics against NumPy on the same arrays, a hand-written NumPy backward
pass, jax.grad and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow_jax as gf
from gradflow_jax.measure import _backend, _norms, _rows, _stats
from gradflow_jax.models import _activations, _mlp
from helpers import np_act, np_mlp

KEY = jax.random.key(0)


def _setup(activation="tanh", batch=12, **kw):
  cfg = gf.MLPConfig(in_dim=6, width=16, depth=4, out_dim=3, activation=activation, **kw)
  params = gf.init_mlp(KEY, cfg)
  x = 1.5 * np.asarray(jax.random.normal(jax.random.key(1), (batch, 6)))
  y = np.arange(batch, dtype=np.int32) % 3
  return cfg, params, x, y


def _np_layer_stats(act, pre, post):
  sat = (pre < act.saturation_bounds[0]) | (pre > act.saturation_bounds[1])
  d = np.abs(np.asarray(act.derivative(jnp.asarray(pre), None)))
  inactive = d <= _activations.INACTIVE_DERIVATIVE_RATIO * act.max_derivative
  return dict(mean=post.mean(), std=post.std(ddof=1), min=post.min(), max=post.max(),
              saturation_fraction=sat.mean(), dead_fraction=inactive.all(axis=0).mean(),
              zero_fraction=(post == 0).mean())


@pytest.mark.parametrize("activation, kw", [
    ("tanh", dict(sigma_w=2.5)), ("sigmoid", dict(sigma_w=4.0)),
    ("relu", dict(sigma_b=1.0)), ("gelu", dict(norm="layernorm"))])
def test_activation_stats_match_numpy(activation, kw):
  cfg, params, x, _ = _setup(activation, **kw)
  stats = gf.activation_stats(cfg, params, x)
  _, trace = gf.models.mlp_forward(cfg, params, x)
  for l in range(cfg.depth):
    pre, post = np.asarray(trace.pre[l]), np.asarray(trace.post[l])
    for field, want in _np_layer_stats(cfg.act, pre, post).items():
      assert float(getattr(stats, field)[l]) == pytest.approx(want, rel=1e-5, abs=1e-6), field
  assert np.all(np.asarray(stats.nonfinite) == 0)


def test_stats_are_not_trivially_zero():
  # guards the tests above: the chosen settings do saturate and do kill units
  cfg, params, x, _ = _setup("tanh", sigma_w=2.5)
  assert float(gf.activation_stats(cfg, params, x).saturation_fraction.max()) > 0.1
  cfg, params, _, _ = _setup("relu", sigma_b=1.0)
  x = np.asarray(jax.random.normal(jax.random.key(1), (12, 6)))
  params["layers"][1]["b"] = params["layers"][1]["b"] - 5.0
  assert float(gf.activation_stats(cfg, params, x).dead_fraction[1]) > 0.5


def _np_backward(cfg, params, x, y):
  """Hand-written backward pass of a plain MLP with softmax cross-entropy."""
  act = lambda z: np_act(cfg.activation, z)
  dact = lambda z: (act(z + 1e-6) - act(z - 1e-6)) / 2e-6
  out, pres, posts, _ = np_mlp(params, x, act)
  p = np.exp(out - out.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  loss = -np.mean(np.log(p[np.arange(len(y)), y]))
  g = (p - np.eye(cfg.out_dim)[y]) / len(y)
  ws = [np.asarray(l["w"], np.float64) for l in params["layers"]]
  inputs = [np.asarray(x, np.float64)] + posts
  gw, gb, gz, ga = [None] * len(ws), [None] * len(ws), [None] * cfg.depth, [None] * cfg.depth
  gw[-1], gb[-1] = inputs[-1].T @ g, g.sum(0)
  grad_h = g @ ws[-1].T
  for l in reversed(range(cfg.depth)):
    ga[l] = grad_h
    gz[l] = grad_h * dact(pres[l])
    gw[l], gb[l] = inputs[l].T @ gz[l], gz[l].sum(0)
    grad_h = gz[l] @ ws[l].T
  return loss, gw, gb, gz, ga


@pytest.mark.parametrize("activation", ["tanh", "relu", "silu"])
def test_gradient_stats_match_numpy_backward(activation):
  cfg, params, x, y = _setup(activation)
  g = gf.gradient_stats(cfg, params, x, y)
  loss, gw, gb, gz, ga = _np_backward(cfg, params, x, y)
  tol = dict(rel=1e-4, abs=1e-7)
  assert float(g.loss) == pytest.approx(loss, **tol)
  np.testing.assert_allclose(g.weight_grad_norm, [np.linalg.norm(w) for w in gw], rtol=1e-4)
  np.testing.assert_allclose(g.bias_grad_norm, [np.linalg.norm(b) for b in gb], rtol=1e-4)
  np.testing.assert_allclose(g.preact_grad_norm, [np.linalg.norm(v) for v in gz], rtol=1e-4)
  np.testing.assert_allclose(g.postact_grad_norm, [np.linalg.norm(v) for v in ga], rtol=1e-4)
  total = np.sqrt(sum(np.sum(w**2) + np.sum(b**2) for w, b in zip(gw, gb)))
  assert float(g.global_norm) == pytest.approx(total, rel=1e-4)


@pytest.mark.parametrize("kw", [dict(residual=True, norm="layernorm", activation="prelu"),
                                dict(norm="batchnorm", activation="elu")])
def test_global_norm_and_layer_norms_equal_jax_grad(kw):
  cfg, params, x, y = _setup(**kw)
  g = gf.gradient_stats(cfg, params, x, y)
  grads = jax.jit(jax.grad(lambda p: gf.loss_value("cross_entropy",
                                                    _mlp.mlp_apply(cfg, p, x)[0], y)))(params)
  assert float(g.global_norm) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-5)
  np.testing.assert_allclose(g.weight_grad_norm, [jnp.linalg.norm(l["w"]) for l in grads["layers"]],
                             rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(residual=True, activation="gelu"),
                                dict(norm="batchnorm", activation="tanh")])
def test_preact_gradients_against_finite_differences(kw):
  """<dL/dz, v> from the perturbation slot equals a float64 central difference."""
  with jax.enable_x64(True):
    cfg, params, x, y = _setup(dtype="float64", **kw)
    base = _mlp.zero_perturb(cfg, (x.shape[0],))
    keys = jax.random.split(jax.random.key(5), cfg.depth)
    v = tuple(jax.random.normal(k, p.shape, jnp.float64) for k, p in zip(keys, base.pre))

    loss = lambda p: gf.loss_value("cross_entropy", _mlp.mlp_apply(cfg, params, x, p)[0], y)
    loss_at = jax.jit(lambda eps: loss(base._replace(pre=tuple(eps * vi for vi in v))))
    h = 1e-5
    fd = (loss_at(h) - loss_at(-h)) / (2 * h)
    gz = jax.jit(jax.grad(loss))(base).pre
    assert float(sum(jnp.sum(g * vi) for g, vi in zip(gz, v))) == pytest.approx(float(fd), rel=1e-7)
    g = gf.gradient_stats(cfg, params, x, y)
    np.testing.assert_allclose(g.preact_grad_norm, [jnp.linalg.norm(gl) for gl in gz], rtol=1e-10)


def test_mse_loss():
  cfg, params, x, _ = _setup("relu")
  t = np.ones((x.shape[0], 3), np.float32)
  g = gf.gradient_stats(cfg, params, x, t, loss="mse")
  out, _ = gf.models.mlp_forward(cfg, params, x)
  assert float(g.loss) == pytest.approx(float(np.mean((np.asarray(out) - 1) ** 2)), rel=1e-6)
  with pytest.raises(ValueError, match=r"expected targets of shape \(12, 3\)"):
    gf.gradient_stats(cfg, params, x, t[:, :2], loss="mse")


def test_nonfinite_inputs_are_reported_not_crashed():
  cfg, params, x, y = _setup("relu")
  x = x.copy()
  x[3, 2] = np.nan
  s = gf.flow_stats(cfg, params, x, y)
  a = s.activations
  assert int(_rows.first_nonfinite_layer(a.nonfinite)) == 0
  # one bad example poisons one row per layer: 16 units x 4 layers
  np.testing.assert_array_equal(a.nonfinite, [16] * cfg.depth)
  assert np.all(np.isfinite(a.mean))  # statistics over the finite entries
  assert not np.isfinite(float(s.gradients.loss))
  assert bool(s.gradients.nonfinite.any())


def test_nan_in_weights_first_layer_reported():
  cfg, params, x, y = _setup("tanh")
  params["layers"][2]["w"] = params["layers"][2]["w"].at[0, 0].set(jnp.inf)
  a = gf.activation_stats(cfg, params, x)
  assert int(_rows.first_nonfinite_layer(a.nonfinite)) == 2
  assert int(_rows.first_nonfinite_layer(jnp.zeros(4, jnp.int32))) == -1


def test_first_flagged_on_host_and_inside_jit_with_positions():
  """One function for every "first bad layer/depth": the first True along the
  last axis (its position when given), -1 where none; NumPy stays NumPy."""
  flags = np.array([[False, False, True, True], [False, False, False, False]])
  depths = np.array([2, 4, 8, 16])
  host = _rows.first_flagged(flags, depths)
  assert isinstance(host, np.ndarray) and host.tolist() == [8, -1]
  assert _rows.first_flagged(flags).tolist() == [2, -1]
  inside = jax.jit(lambda f: _rows.first_flagged(f, depths))(jnp.asarray(flags))
  assert np.asarray(inside).tolist() == [8, -1]


def test_bad_labels():
  cfg, params, x, y = _setup()
  with pytest.raises(ValueError, match=r"labels in \[0, 3\)"):
    gf.gradient_stats(cfg, params, x, y + 1)
  with pytest.raises(ValueError, match="integer labels"):
    gf.gradient_stats(cfg, params, x, y.astype(np.float32))
  with pytest.raises(ValueError, match="unknown loss"):
    gf.gradient_stats(cfg, params, x, y, loss="hinge")


def test_inside_user_jit_and_vmap_over_seeds():
  cfg, _, x, y = _setup("relu")

  @jax.jit
  def per_seed(keys):
    return jax.vmap(lambda k: _stats.flow_stats_fn(cfg, gf.init_mlp(k, cfg), jnp.asarray(x),
                                               jnp.asarray(y), "cross_entropy"))(keys)

  keys = jax.random.split(KEY, 3)
  batched = per_seed(keys)
  assert batched.activations.std.shape == (3, cfg.depth)
  one = gf.flow_stats(cfg, gf.init_mlp(keys[1], cfg), x, y)
  np.testing.assert_allclose(batched.gradients.preact_grad_norm[1],
                             one.gradients.preact_grad_norm, rtol=1e-5)


def test_histograms_match_numpy():
  cfg, params, x, _ = _setup("tanh", sigma_w=2.0)
  counts, edges = _stats.histograms(cfg, params, x, bins=10, value_range=(-1.0, 1.0))
  _, trace = gf.models.mlp_forward(cfg, params, x)
  for l in range(cfg.depth):
    want, _ = np.histogram(np.asarray(trace.post[l]), bins=np.asarray(edges))
    np.testing.assert_array_equal(counts[l], want)


def test_std_of_collapsed_layer_does_not_cancel():
  # mean 0.5, spread 1e-4: a naive E[x^2] - E[x]^2 in float32 loses it entirely
  cfg = gf.MLPConfig(in_dim=4, width=256, depth=2, out_dim=2, activation="sigmoid")
  post = 0.5 + 1e-4 * np.asarray(jax.random.normal(KEY, (2, 64, 256)))
  trace = _mlp.Trace(jnp.zeros_like(post), jnp.asarray(post, jnp.float32), None)
  s = _stats.trace_stats(cfg, trace)
  want = np.asarray(post, np.float32).astype(np.float64).reshape(2, -1).std(axis=1, ddof=1)
  np.testing.assert_allclose(s.std, want, rtol=1e-3)


@pytest.mark.parametrize("mean,spread", [(0.5, 1e-4), (1e3, 0.1), (-40.0, 3.0)])
def test_std_of_offset_rows_matches_numpy_to_float32(mean, spread):
  """The finite path's two-pass variance (centred on the row mean) keeps
  float32 precision however far the values sit from 0."""
  rng = np.random.default_rng(1)
  v = (mean + spread * rng.normal(size=(3, 512, 64))).astype(np.float32)
  s = jax.jit(lambda v: _rows.rows_stats([_rows.Row(v[i], v[i]) for i in range(3)]))(v)
  want = v.astype(np.float64).reshape(3, -1)
  np.testing.assert_allclose(s.std, want.std(axis=1, ddof=1), rtol=1e-6)
  np.testing.assert_allclose(s.mean, want.mean(axis=1), rtol=1e-6)


def test_only_a_familys_own_large_rows_are_stacked_together():
  """Stacking rows of different arrays copies them; only a family's run of
  slices (a scan's own stacked output) is free. Rows of two families, large
  or small, and a large row of none, get groups of their own; small rows of
  no family share one."""
  big = (8, _backend.ALONE_ENTRIES // 8 + 1)
  rows = ([_rows.Row(jnp.zeros(big), None, family="a") for _ in range(3)]
          + [_rows.Row(jnp.zeros(big), None, family="b") for _ in range(2)]
          + [_rows.Row(jnp.zeros(big), None)]
          + [_rows.Row(jnp.zeros((4, 4)), None, family=f) for f in ("a2", "b2", None, None)]
          + [_rows.Row(jnp.zeros((4, 4)), None, family="a2")])
  rows = [r._replace(tested=r.values) for r in rows]
  assert sorted(_rows._group_rows(rows)) == [[0, 1, 2], [3, 4], [5], [6, 10], [7], [8, 9]]


def test_finite_and_masked_paths_agree_with_numpy():
  """All-finite traces skip the finiteness masks; one Inf/NaN sends the whole
  trace through the masked path. Both must give NumPy's numbers."""
  cfg = gf.MLPConfig(in_dim=4, width=32, depth=3, out_dim=2, activation="tanh")
  pre = 2 * np.asarray(jax.random.normal(KEY, (3, 16, 32)), np.float32)
  post = np.tanh(pre)
  clean = _stats.trace_stats(cfg, _mlp.Trace(jnp.asarray(pre), jnp.asarray(post), None))
  pre_bad, post_bad = pre.copy(), post.copy()
  pre_bad[0, 1, 2] = np.inf  # tanh(inf) = 1: a finite output from an infinite input
  post_bad[0, 1, 2] = 1.0
  post_bad[2, 3, 4] = np.nan
  dirty = _stats.trace_stats(cfg, _mlp.Trace(jnp.asarray(pre_bad), jnp.asarray(post_bad), None))
  np.testing.assert_array_equal(clean.nonfinite, [0, 0, 0])
  np.testing.assert_array_equal(dirty.nonfinite, [1, 0, 1])
  for l in range(3):
    for stats, p, q in ((clean, pre[l], post[l]), (dirty, pre_bad[l], post_bad[l])):
      keep = np.isfinite(q)
      want = _np_layer_stats(cfg.act, np.where(np.isfinite(p), p, 0), q[keep].reshape(1, -1))
      for field in ("mean", "std", "min", "max"):
        assert float(getattr(stats, field)[l]) == pytest.approx(want[field], rel=1e-5, abs=1e-6), field
      sat = np.mean((p < cfg.act.saturation_bounds[0]) | (p > cfg.act.saturation_bounds[1]))
      assert float(stats.saturation_fraction[l]) == pytest.approx(sat)


@pytest.mark.parametrize("exact", [None, 150, 50, 5])
def test_rows_of_mixed_shapes_and_tests_match_numpy(exact, monkeypatch):
  """rows_stats groups rows of one shape and test into one reduction; each row
  must still get its own numbers, in its own place, on both paths. Dead units
  are read from the derivative in the reference (not from column extremes).
  ``exact`` lowers the bound under which mask counts are packed into one
  float code (9 examples: base 10): two masks a code, one, and none (int32)."""
  if exact is not None:
    monkeypatch.setattr(_rows, "_EXACT_FLOAT32", exact)
  rng = np.random.default_rng(0)
  z = [rng.normal(size=(9, 7)).astype(np.float32) for _ in range(6)]
  z[0][:, :3] -= 8.0  # relu: three dead units
  z[0][:, 5] += 8.0  # relu: one unit active on every example
  z[2][:, 1] = 9.0 * np.sign(rng.normal(size=9))  # tanh: a unit in both flat tails
  z[3][:, :2] = 0.0  # no activation: two units exactly 0
  z[4] = rng.normal(size=(9, 4)).astype(np.float32)  # another shape, between the others
  z[5][:, 4] -= 9.0  # gelu: one dead unit
  acts = ["relu", None, "tanh", None, "relu", "gelu"]
  for bad in (False, True):
    vals = [v.copy() for v in z]
    if bad:
      vals[1][2, 2] = np.nan
    fns = [a and _activations.get_activation(a) for a in acts]
    s = jax.jit(lambda vs: _rows.rows_stats([_rows.Row(v, v, f) for v, f in zip(vs, fns)]))(
        [jnp.asarray(v) for v in vals])
    for k, (v, a) in enumerate(zip(vals, acts)):
      keep = v[np.isfinite(v)]
      want = dict(mean=keep.mean(), std=keep.std(ddof=1), min=keep.min(), max=keep.max(),
                  zero_fraction=(v == 0).mean(), nonfinite=(~np.isfinite(v)).sum())
      if a is None:
        want["dead_fraction"] = (v == 0).all(axis=0).mean()
      else:
        act = _activations.get_activation(a)
        want.update(_np_layer_stats(act, v, v))
        if not all(np.isinf(act.inactive_bounds)):
          d = np.abs(np.asarray(act.derivative(jnp.asarray(v), None)))
          active = d > _activations.INACTIVE_DERIVATIVE_RATIO * act.max_derivative
          want["always_active_fraction"] = active.all(axis=0).mean()
      if "always_active_fraction" not in want:
        assert np.isnan(float(s.always_active_fraction[k])), (bad, k)
        for f in ("mean", "std", "min", "max"):
          want[f] = dict(mean=keep.mean(), std=keep.std(ddof=1), min=keep.min(),
                         max=keep.max())[f]
      for field, w in want.items():
        assert float(getattr(s, field)[k]) == pytest.approx(float(w), rel=1e-5, abs=1e-6), \
            (bad, k, field)
    assert float(s.dead_fraction[0]) == pytest.approx(3 / 7)
    assert float(s.always_active_fraction[0]) == pytest.approx(1 / 7)
    assert float(s.dead_fraction[2]) == pytest.approx(1 / 7)
    assert float(s.dead_fraction[3]) == pytest.approx(2 / 7)
    assert np.isnan(float(s.saturation_fraction[1]))


def test_grouped_norms_match_numpy_in_the_callers_order():
  """Stacked by shape (a family's layers together), large arrays alone: each
  norm still lands at its own array's position, equal to NumPy's."""
  rng = np.random.default_rng(0)
  shapes = [(4, 3), (2, 5), (4, 3), (100, 100), (2, 5), (100, 100), (7,)]
  families = [None, "f", None, None, "f", None, None]
  arrays = [rng.normal(size=s).astype(np.float32) * (k + 1) for k, s in enumerate(shapes)]
  got = jax.jit(lambda a: _norms.grouped_norms(a, families))(arrays)
  want = [np.linalg.norm(a.astype(np.float64)) for a in arrays]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert _norms.grouped_norms([], []).shape == (0,)


def test_groups_temporaries_do_not_add_up():
  """Each group's statistics are computed only after the previous group's, so
  the call's temporaries stay near one group's size, not the sum over groups
  (7 separate groups of relu rows: 5.0x the rows' bytes before, 1.0x after).
  Past glibc's 32 MB mmap threshold every page of a fresh temporary is a page
  fault, on every step."""
  act = _activations.get_activation("relu")
  shape = (256, _backend.ALONE_ENTRIES // 32)  # too large to stack: a group each
  assert 7 * np.prod(shape) * 4 > _backend.SEQUENTIAL_BYTES
  vs = [jnp.zeros(shape) for _ in range(7)]
  fn = lambda vs: _rows.rows_stats([_rows.Row(v, v, act, family=f"f{i}")
                                     for i, v in enumerate(vs)])
  temp = jax.jit(fn).lower(vs).compile().memory_analysis().temp_size_in_bytes
  assert temp <= 1.5 * sum(v.nbytes for v in vs)
