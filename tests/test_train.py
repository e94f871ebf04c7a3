"""Training: each logged number against an independent computation, the NaN
guard on a run made to diverge, and the optax monitor inside a user's step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow_jax as gf
from gradflow_jax import _data
from gradflow_jax.models import _mlp
from gradflow_jax.studies import _train

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def data():
  return _data.teacher_task(in_dim=8, classes=3, n=240, seed=0)


def _cfg(**kw):
  return gf.MLPConfig(**{**dict(in_dim=8, width=16, depth=4, out_dim=3, activation="tanh"), **kw})


def test_step_logs_match_gradient_stats_and_numpy_update(data):
  cfg = _cfg()
  tc = gf.studies.TrainConfig(optimizer="sgd", lr=0.1, clip=0.05)
  params = gf.init_mlp(KEY, cfg)
  tx = _train.make_optimizer(tc)
  x, y = data.x_train[:32], data.y_train[:32]
  new, _, log = jax.jit(gf.studies.make_step(cfg, tc, tx))(params, tx.init(params), x, y)
  ref = gf.flow_stats(cfg, params, x, y)
  np.testing.assert_allclose(log.weight_grad_norm, ref.gradients.weight_grad_norm, rtol=1e-5)
  np.testing.assert_allclose(log.preact_grad_norm, ref.gradients.preact_grad_norm, rtol=1e-5)
  np.testing.assert_allclose(log.act_std, ref.activations.std, rtol=1e-5)
  norm = float(ref.gradients.global_norm)
  assert norm > 0.05 and bool(log.clipped)
  assert float(log.clipped_grad_norm) == pytest.approx(0.05)
  grads = jax.jit(jax.grad(lambda p: gf.loss_value("cross_entropy",
                                                    _mlp.mlp_apply(cfg, p, x)[0], y)))(params)
  for i, (g, p, q) in enumerate(zip(grads["layers"], params["layers"], new["layers"])):
    want = np.asarray(p["w"]) - 0.1 * np.asarray(g["w"]) * 0.05 / norm  # clipped SGD by hand
    np.testing.assert_allclose(q["w"], want, rtol=1e-4, atol=1e-7)
    ratio = np.linalg.norm(want - np.asarray(p["w"])) / np.linalg.norm(np.asarray(p["w"]))
    assert float(log.update_ratio[i]) == pytest.approx(ratio, rel=1e-3)


def test_monitor_in_a_user_jitted_step_equals_the_loop(data):
  cfg = _cfg(activation="relu")
  params = gf.init_mlp(KEY, cfg)
  x, y = data.x_train[:32], data.y_train[:32]
  user_tx = optax.chain(gf.watch.gradient_flow_monitor(), optax.clip_by_global_norm(1.0), optax.adam(1e-3))

  @jax.jit
  def user_step(params, state):
    grads = jax.grad(lambda p: gf.loss_value("cross_entropy", _mlp.mlp_apply(cfg, p, x)[0], y))(params)
    updates, state = user_tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  new_user, state = user_step(params, user_tx.init(params))
  mon = gf.watch.find_monitor_state(state)
  tc = gf.studies.TrainConfig(optimizer="adam", lr=1e-3, clip=1.0)
  tx = _train.make_optimizer(tc)
  new_loop, _, log = jax.jit(gf.studies.make_step(cfg, tc, tx))(params, tx.init(params), x, y)
  np.testing.assert_allclose([l["w"] for l in mon.grad_norms["layers"]], log.weight_grad_norm,
                             rtol=1e-5)
  assert float(mon.global_norm) == pytest.approx(float(log.grad_norm), rel=1e-5)
  assert int(mon.count) == 1 and not bool(mon.nonfinite)
  chex.assert_trees_all_close(new_user, new_loop, rtol=1e-5, atol=1e-7)
  with pytest.raises(LookupError):
    gf.watch.find_monitor_state(optax.adam(1e-3).init(params))


def test_guard_stops_a_diverging_run_and_keeps_finite_params(data):
  cfg = _cfg(activation="relu", depth=6)
  tc = gf.studies.TrainConfig(optimizer="sgd", lr=50.0, steps=40, eval_every=10)
  res = gf.studies.train(cfg, tc, data)
  assert res.stopped_at is not None and res.stopped_at < 40
  assert len(res.logs["loss"]) == res.stopped_at + 1
  assert bool(res.logs["nonfinite"][-1]) and not res.logs["nonfinite"][:-1].any()
  chex.assert_tree_all_finite(res.params)
  # the kept parameters are those before the bad step: replaying that many steps gives them
  replay = gf.studies.train(cfg, gf.studies.TrainConfig(**{**tc.__dict__, "steps": res.stopped_at,
                                             "eval_every": 40}), data)
  chex.assert_trees_all_equal(res.params, replay.params)
  # accuracy is recorded at the step the kept parameters belong to, never past the stop
  assert res.eval_steps[-1] == res.stopped_at and res.eval_accuracy[-1] == replay.eval_accuracy[-1]
  skip = gf.studies.train(cfg, gf.studies.TrainConfig(**{**tc.__dict__, "on_nonfinite": "skip"}), data)
  assert len(skip.logs["loss"]) == 40


def test_step_on_nonfinite_batch_changes_nothing(data):
  cfg = _cfg()
  tc = gf.studies.TrainConfig(optimizer="adam", lr=1e-2)
  tx = _train.make_optimizer(tc)
  params = gf.init_mlp(KEY, cfg)
  opt = tx.init(params)
  step = jax.jit(gf.studies.make_step(cfg, tc, tx))
  p1, opt1, _ = step(params, opt, data.x_train[:32], data.y_train[:32])  # moments now non-zero
  x = jnp.asarray(data.x_train[32:64]).at[5, 1].set(jnp.nan)
  p2, opt2, log = step(p1, opt1, x, data.y_train[32:64])
  assert bool(log.nonfinite) and not np.isfinite(float(log.loss))
  np.testing.assert_array_equal(log.update_ratio, 0.0)
  chex.assert_trees_all_equal((p1, opt1), (p2, opt2))


def test_residual_keeps_early_layer_gradients(data):
  """The seed's last exercise, measured: a deep sigmoid MLP's first layer gets a
  vanishing gradient; the residual one does not."""
  tc = gf.studies.TrainConfig(steps=20, eval_every=20)
  plain = gf.studies.train(_cfg(activation="sigmoid", depth=8), tc, data)
  res = gf.studies.train(_cfg(activation="sigmoid", depth=8, residual=True), tc, data)
  g_plain = np.median(plain.logs["preact_grad_norm"][:, 0])
  g_res = np.median(res.logs["preact_grad_norm"][:, 0])
  assert g_res > 100 * g_plain


@pytest.mark.parametrize("kw, match", [
    (dict(lr=0.0), "learning rate > 0"), (dict(clip=-1.0), "clip"),
    (dict(optimizer="lbfgs"), "unknown optimizer"), (dict(steps=0), "steps >= 1")])
def test_bad_train_config(kw, match):
  with pytest.raises(ValueError, match=match):
    gf.studies.TrainConfig(**kw)


def test_bad_data_caught_before_compiling(data):
  with pytest.raises(ValueError, match="batch size <= 192"):
    gf.studies.train(_cfg(), gf.studies.TrainConfig(batch_size=1000), data)
  with pytest.raises(ValueError, match="expected inputs with 5 features"):
    gf.studies.train(_cfg(in_dim=5), gf.studies.TrainConfig(), data)
  with pytest.raises(ValueError, match=r"labels in \[0, 2\)"):
    gf.studies.train(_cfg(out_dim=2), gf.studies.TrainConfig(), data)


def test_digits_is_standardized_and_split():
  d = gf.load_digits(seed=1)
  assert d.x_train.shape[1] == 64 and d.classes == 10
  assert len(d.x_train) + len(d.x_test) == 1797
  np.testing.assert_allclose(d.x_train.mean(0), 0, atol=1e-5)


def test_batches_visit_each_example_once_per_epoch():
  from gradflow_jax.studies._train import _epoch_perm, _next_batch
  key, n, size = jax.random.key(3), 10, 3  # 3 batches per epoch, one example left out
  perm = _epoch_perm(key, 0, n, size)
  seen = []
  for step in range(6):
    perm, idx = _next_batch(key, perm, step, n, size)
    seen.append(np.asarray(idx))
  for epoch in (seen[:3], seen[3:]):
    flat = np.concatenate(epoch)
    assert len(set(flat.tolist())) == 9 and flat.min() >= 0 and flat.max() < n
  assert not np.array_equal(np.concatenate(seen[:3]), np.concatenate(seen[3:]))  # reshuffled


def test_dead_relu_experiment_shows_its_premise():
  """The dead-relu experiment's settings (plain SGD, lr 0.5) kill ReLU units:
  within 60 steps the mean dead fraction goes from under 10% to over 30%,
  while the same run with clip_by_global_norm(1) keeps it under 10%; leaky
  ReLU's units never die (its run may be stopped by the guard: too large a
  step for it too)."""
  from gradflow_jax.studies import _experiments
  data = gf.load_digits()  # the experiment's data
  runs = _experiments.experiment_runs("dead-relu", data.x_train.shape[1], data.classes,
                                      {"steps": 60})
  results = {label: gf.studies.train(cfg, tc, data) for label, cfg, tc in runs}
  dead = {k: np.asarray(r.logs["dead_fraction"]) for k, r in results.items()}
  relu, leaky, clipped = (dead[label] for label, _, _ in runs)
  assert relu[0].mean() < 0.1 and relu[-1].mean() > 0.3
  assert clipped[-1].mean() < 0.1
  assert np.all(leaky == 0)
  acc = {k: r.eval_accuracy[-1] for k, r in results.items()}
  assert acc[runs[2][0]] > acc[runs[0][0]] + 0.3
