"""RNN through time against jacfwd; depth sweep: prefixes, theory, sharding."""

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow_jax as gf
from helpers import run_on_host_devices
from gradflow_jax.measure import _jacobians
from gradflow_jax.models import _mlp, _rnn
from gradflow_jax.studies import _rnn_sweep


def test_rnn_jacobians_match_jacfwd_and_grad():
  cfg = gf.RNNConfig(in_dim=3, hidden=8, activation="sigmoid", init="gaussian", scale=3.0)
  params = gf.init_rnn(jax.random.key(0), cfg)
  assert float(np.linalg.norm(np.asarray(params["w"]), 2)) == pytest.approx(3.0, rel=1e-5)
  xs = np.asarray(jax.random.normal(jax.random.key(1), (5, 2, 3)))
  r = gf.rnn_through_time(cfg, params, xs)
  _, hs = _rnn.rnn_apply(cfg, params, jnp.asarray(xs))
  act = cfg.act

  def h_last_from(t, h, b):
    for s in range(t + 1, 5):
      h = act(h @ params["w"] + xs[s, b] @ params["u"] + params["b"])
    return h

  for b in range(2):
    for t in range(5):
      j = np.asarray(jax.jacfwd(lambda v: h_last_from(t, v, b))(hs[t, b]))
      assert float(r.jacobian_norm[b, t]) == pytest.approx(np.linalg.norm(j, 2), rel=1e-4)
      assert float(r.jacobian_frobenius[b, t]) == pytest.approx(np.linalg.norm(j), rel=1e-4)
  # the bound holds, with gamma = 1/4 for sigmoid
  assert np.all(np.asarray(r.jacobian_norm) <= np.asarray(r.pascanu_bound)[None] * (1 + 1e-5))
  np.testing.assert_allclose(r.pascanu_bound, 0.75 ** np.arange(4, -1, -1), rtol=1e-5)


def test_rnn_spectral_radius_and_bad_input():
  cfg = gf.RNNConfig(in_dim=2, hidden=6, scale=0.9, scale_kind="spectral_radius", init="gaussian")
  w = np.asarray(gf.init_rnn(jax.random.key(2), cfg)["w"])
  assert np.max(np.abs(np.linalg.eigvals(w))) == pytest.approx(0.9, rel=1e-5)
  with pytest.raises(ValueError, match="scale_kind"):
    gf.RNNConfig(in_dim=2, hidden=6, scale_kind="frobenius")
  with pytest.raises(ValueError, match=r"\(T >= 2, batch, 2\)"):
    gf.rnn_through_time(cfg, gf.init_rnn(jax.random.key(2), cfg), np.zeros((5, 2, 3)))


def test_rnn_sweep_changes_from_vanishing_to_exploding():
  cfg = gf.RNNConfig(in_dim=2, hidden=16)
  runs = _rnn_sweep.run_rnn_sweep(cfg, [0.5, 3.0], steps=30, batch=2)
  whole = [float(np.median(r["jacobian_norm"][:, 0])) for r in runs]
  assert whole[0] < 1e-6 and whole[1] > 1.0


SMALL = dict(activations=("tanh",), inits=("gaussian",), sigma_ws=(1.0, 1.5),
             sigma_bs=(0.2,), max_depth=12, width=16, batch=2, seeds=3, spectrum_depths=4)


def test_sweep_prefix_equals_direct_network_and_theory_is_attached():
  settings = gf.studies.SweepSettings(**{**SMALL, "activations": ("tanh",), "sigma_ws": (1.5,),
                                 "sigma_bs": (0.2,)})
  res = gf.studies.run_sweep(settings)
  (point,) = res["points"]
  assert point["mean_sq_singular_value"].shape == (3, 2, 12)
  np.testing.assert_array_equal(point["spectrum_depths"], _jacobians.log_spaced_depths(12, 4))
  assert point["chi1"] == pytest.approx(gf.theory.chi1("tanh", 1.5, 0.2))
  assert np.all(np.isfinite(point["theory_mean_sq_singular_value"]))
  assert np.all(point["mean_sq_singular_value"] > 0)


SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np, jax, gradflow_jax as gf
    res = gf.studies.run_sweep(gf.studies.SweepSettings(**json.loads(sys.argv[1])))
    np.savez(sys.argv[2], devices=res["devices"],
             msq=np.stack([p["mean_sq_singular_value"] for p in res["points"]]),
             top=np.stack([p["spectral_norm"] for p in res["points"]]))
""")


def test_sharded_sweep_equals_single_device(tmp_path):
  kw = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()}
  out = tmp_path / "sharded.npz"
  run_on_host_devices(["-c", SCRIPT, json.dumps(kw), str(out)])
  sharded = np.load(out)
  assert int(sharded["devices"]) == 4
  res = gf.studies.run_sweep(gf.studies.SweepSettings(**SMALL))
  assert res["devices"] == 1
  np.testing.assert_allclose(sharded["msq"], np.stack([p["mean_sq_singular_value"]
                                                       for p in res["points"]]), rtol=1e-5)
  np.testing.assert_allclose(sharded["top"], np.stack([p["spectral_norm"] for p in res["points"]]),
                             rtol=1e-5)


def test_sweep_bad_settings():
  with pytest.raises(ValueError, match="max_depth"):
    gf.studies.SweepSettings(max_depth=0)
  with pytest.raises(ValueError, match="sigma_w"):
    gf.studies.SweepSettings(sigma_ws=(-1.0,))


def test_rnn_as_a_probed_model_equals_its_own_gradients_through_time():
  """The RNN's state taps come out of lax.scan one per step; ||dL/dh_t|| over
  the batch equals rnn_through_time's per-example values combined."""
  cfg = gf.RNNConfig(in_dim=3, hidden=8, activation="tanh", scale=1.2)
  params = gf.init_rnn(jax.random.key(0), cfg)
  xs = jax.random.normal(jax.random.key(1), (6, 4, 3))  # (T, batch, in)
  ref = gf.rnn_through_time(cfg, params, xs)
  model = gf.rnn_model(cfg, params)
  s = gf.model_flow_stats(model, jnp.swapaxes(xs, 0, 1), jnp.zeros((4, 1)), loss="mse")
  names = [f"h/layer_{t}" for t in range(6)]
  assert [n for n in s.names if n.startswith("h/")] == names
  got = np.asarray(s.tap_grad_norm)[[s.names.index(n) for n in names]]
  want = np.sqrt(np.sum(np.asarray(ref.state_grad_norm, np.float64) ** 2, axis=0))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert s.activation_names[s.names.index("z/layer_0")] == "tanh"


def test_init_rnn_under_x64_scales_w_to_its_spectral_norm():
  with jax.enable_x64(True):
    cfg = gf.RNNConfig(in_dim=3, hidden=8, scale=1.2, dtype="float64")
    p = gf.init_rnn(jax.random.key(0), cfg)
    assert p["w"].dtype == jnp.float64
    np.testing.assert_allclose(np.linalg.norm(np.asarray(p["w"]), 2), 1.2, rtol=1e-12)


def test_per_layer_curves_of_a_deep_net_measure_a_subset_of_layers_exactly():
  """Past CURVE_LAYERS layers the curves measure evenly spaced layers (first
  and last included); each equals the norm measured with every layer."""
  from gradflow_jax.measure import _jacobians
  from gradflow_jax.studies import _sweep
  assert _sweep.curve_layers(5) == (0, 1, 2, 3, 4)
  many = _sweep.curve_layers(100_000)
  assert len(many) == _sweep.CURVE_LAYERS and many[0] == 0 and many[-1] == 99_999
  cfg = gf.MLPConfig(6, 6, 9, 1, activation="relu")
  params = gf.init_mlp(jax.random.key(0), cfg)
  x = jax.random.normal(jax.random.key(1), (3, 6))
  lp0 = _mlp.layer_params(cfg, params, 0)
  stacked = _mlp.stacked_layer_params(cfg, params)
  run = jax.jit(lambda layers: _jacobians.layer_norms_stacked(cfg, lp0, stacked, x, "exact",
                                                              1e-5, 100, layers),
                static_argnums=0)
  every, _ = run(None)
  some, _ = run((0, 4, 8))
  np.testing.assert_allclose(np.asarray(some), np.asarray(every)[:, [0, 4, 8]], rtol=1e-6)
  later, _ = run((3, 8))
  np.testing.assert_allclose(np.asarray(later), np.asarray(every)[:, [3, 8]], rtol=1e-6)


def test_layer_curves_carry_their_mean_field_reference(tmp_path):
  """Each per-layer curve carries chi_1 of its own (activation, sigma_w,
  sigma_b), the reference its plot draws (He-ReLU: 1, not the spectral norm's
  ~2); an unconverged value is left out of the plot, not drawn as measured."""
  from gradflow_jax import theory
  from gradflow_jax.render import _depth_plots
  from gradflow_jax.studies import _sweep
  s = _sweep.SweepSettings(activations=("relu",), sigma_bs=(0.0, 0.3), max_depth=3, width=8,
                           batch=2, seeds=1)
  curves = _sweep.layer_curves(s)
  assert len(curves) == 2
  for c, sb in zip(curves, (0.0, 0.3)):
    assert c["chi1"] == pytest.approx(theory.chi1("relu", np.sqrt(2.0), sb), rel=1e-5)
    assert np.all(np.asarray(c["norms"]) > np.sqrt(c["chi1"]))  # the norm sits above the RMS
  curves[0]["converged"] = np.zeros_like(curves[0]["converged"])
  _depth_plots.plot_layer_jacobians(curves, tmp_path / "l.png")
  assert (tmp_path / "l.png").stat().st_size > 0


def test_sweep_time_estimate_times_one_devices_share_of_the_grid():
  """The grid (points x seeds) is split over the devices, padded to a
  multiple: the calibration step is timed on one device's lanes."""
  from gradflow_jax.studies._sweep import SweepSettings
  settings = SweepSettings(activations=("tanh",), sigma_ws=(1.0, 1.5, 2.0), max_depth=50000,
                           width=64, batch=4, seeds=3)
  asked = []
  step = lambda width, lanes: asked.append(lanes) or 1e-6 * lanes
  one, four = (settings.estimated_seconds(step, devices=d) for d in (1, 4))
  assert asked[0] == 9 * 4 and asked[2] == 3 * 4  # 9 grid points: 3 per device (12 padded)
  assert asked[1] == asked[3] == 3 * 4  # the per-layer curves run per point, not per seed
  assert four < one
