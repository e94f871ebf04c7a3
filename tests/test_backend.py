"""The backend aids (``_backend``) change how XLA schedules a program, never
a number: statistics with the aids on and off are identical."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import gradflow_jax as gf
from gradflow_jax.measure import _backend

W = jax.random.normal(jax.random.key(0), (4, 6, 6)) / np.sqrt(6.0)
X = jax.random.normal(jax.random.key(1), (8, 6))
Y = jnp.arange(8) % 6


def _scanned(w, x):
  def layer(h, wl):
    return jnp.tanh(gf.tap("z", gf.tap("h", h) @ wl, role="pre", activation="tanh")), None
  return jax.lax.scan(layer, x, w)[0]


def test_statistics_are_the_same_with_the_aids_on_and_off(monkeypatch):
  got = {}
  for switch in ("1", "0"):
    monkeypatch.setenv("GRADFLOW_BACKEND_AIDS", switch)
    assert _backend.enabled() == (switch == "1")
    # a new probed model each time: its programs are traced afresh
    stats = gf.model_flow_stats(gf.probed(_scanned, W), X, Y)
    step = jax.jit(lambda w: gf.value_and_grad(
        lambda w, x, y: gf.loss_value("cross_entropy", _scanned(w, x), y))(w, X, Y))(W)
    got[switch] = jax.device_get((stats, step[0], step[1], step[2].stats, step[2].norms))
  chex.assert_trees_all_equal(got["1"], got["0"])
  assert len(got["1"][0].names) == 8


def test_the_switch_defaults_to_the_cpu(monkeypatch):
  monkeypatch.delenv("GRADFLOW_BACKEND_AIDS", raising=False)
  assert _backend.enabled() == (jax.default_backend() == "cpu")
  monkeypatch.setenv("GRADFLOW_BACKEND_AIDS", "off")
  assert not _backend.enabled()
