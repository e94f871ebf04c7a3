"""The capture, construct by construct: tap values, dL/d tap (with full
perturbations and with norm slots) and parameter gradients equal those of the
same model written with explicit perturbation inputs and ``jax.grad``."""

import os
import re
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.lax import scan  # imported early: the capture must not care how scan is reached

import gradflow_jax as gf
from gradflow_jax import capture
from gradflow_jax.capture import _probed as _probe
from helpers import run_on_host_devices, tol

W = jax.random.normal(jax.random.key(0), (3, 4, 4)) / 2.0
X = jax.random.normal(jax.random.key(1), (5, 4))


def _layer(h, w):
  return jnp.tanh(h @ w)


def _captured(model, w, x):
  """(loss, taps, d loss/d params, d loss/d taps, ||dL/d tap||^2 from norm slots)."""
  tapped = capture.trace(model, (w, x), data_argnums=(1,))
  zeros = _probe.zero_perturbations(tapped.avals)

  def loss(w, p, how="add"):
    return capture.run(tapped, (w, x), p, how)
  (value, taps), (gw, gp) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(w, zeros)
  slots = _probe.norm_slots(tapped.avals)
  squares = jax.grad(lambda p: loss(w, p, "norms")[0])(slots)
  return value, taps, gw, gp, dict(zip(tapped.avals, _probe.slot_values(squares,
                                                                          list(tapped.avals))))


def _check(model, reference, w=W, x=X, names=None):
  """``reference(w, x, p) -> (loss, taps)`` takes explicit perturbations."""
  value, taps, gw, gp, squares = _captured(model, w, x)
  if names is not None:
    assert list(taps) == names
  zeros = {k: jnp.zeros_like(v) for k, v in taps.items()}
  (rv, rtaps), (rgw, rgp) = jax.value_and_grad(reference, argnums=(0, 2), has_aux=True)(
      w, x, zeros)
  assert sorted(rtaps) == sorted(taps)
  np.testing.assert_allclose(value, rv, **tol())
  chex.assert_trees_all_close(gw, rgw, **tol())
  np.testing.assert_allclose(value, model(w, x), **tol())  # the model, run plainly
  chex.assert_trees_all_close(jax.grad(model)(w, x), rgw, **tol())
  for k in taps:
    np.testing.assert_allclose(taps[k], rtaps[k], **tol(), err_msg=k)
    np.testing.assert_allclose(gp[k], rgp[k], **tol(), err_msg=k)
    np.testing.assert_allclose(squares[k], np.sum(np.asarray(rgp[k], np.float64) ** 2),
                               rtol=1e-5, atol=1e-12, err_msg=k)
  assert any(np.any(np.asarray(g) != 0) for g in gp.values())


def _unrolled(w, x, p, name="h", length=3):
  h, taps = x, {}
  for i in range(length):
    k = f"{name}/layer_{i}"
    taps[k] = h @ w[i] + p[k]
    h = jnp.tanh(taps[k])
  return jnp.sum(h ** 2), taps


def test_scan_imported_before_gradflow():
  def model(w, x):
    h, _ = scan(lambda h, wl: (jnp.tanh(gf.tap("h", h @ wl)), None), x, w)
    return jnp.sum(h ** 2)
  _check(model, _unrolled, names=["h/layer_0", "h/layer_1", "h/layer_2"])


def test_fori_loop_with_static_bounds():
  def model(w, x):
    return jnp.sum(jax.lax.fori_loop(0, 3, lambda i, h: jnp.tanh(gf.tap("h", h @ w[i])), x) ** 2)
  _check(model, _unrolled)


def test_reverse_scan_names_layers_by_their_xs_index():
  def model(w, x):
    h, _ = jax.lax.scan(lambda h, wl: (jnp.tanh(gf.tap("h", h @ wl)), None), x, w[::-1],
                        reverse=True)
    return jnp.sum(h ** 2)

  def reference(w, x, p):
    h, taps = x, {}
    for i in range(3):  # a reverse scan over w[::-1] visits xs index 2, 1, 0
      k = f"h/layer_{2 - i}"
      taps[k] = h @ w[i] + p[k]
      h = jnp.tanh(taps[k])
    return jnp.sum(h ** 2), taps
  _check(model, reference)


def test_lax_map_taps_each_mapped_element():
  def model(w, x):
    return jnp.sum(jax.lax.map(lambda r: jnp.tanh(gf.tap("m", r @ w[0])), x) ** 2)

  def reference(w, x, p):
    taps = {f"m/layer_{i}": x[i] @ w[0] + p[f"m/layer_{i}"] for i in range(x.shape[0])}
    return sum(jnp.sum(jnp.tanh(t) ** 2) for t in taps.values()), taps
  _check(model, reference)


def test_nested_scans():
  def model(w, x):
    def outer(h, wl):
      h, _ = jax.lax.scan(lambda h, _: (jnp.tanh(gf.tap("h", h @ wl)), None), h, None, length=2)
      return h, None
    return jnp.sum(jax.lax.scan(outer, x, w)[0] ** 2)

  def reference(w, x, p):
    h, taps = x, {}
    for i in range(3):
      for j in range(2):
        k = f"h/layer_{j}/layer_{i}"
        taps[k] = h @ w[i] + p[k]
        h = jnp.tanh(taps[k])
    return jnp.sum(h ** 2), taps
  _check(model, reference)


@pytest.mark.parametrize("positive", [True, False])
def test_cond_taps_every_branch_the_branch_not_taken_reads_zeros(positive):
  x = X if positive else -X - 10.0

  def model(w, x):
    h = gf.tap("in", x @ w[0])
    h = jax.lax.cond(h.sum() > 0, lambda h: jnp.tanh(gf.tap("yes", h @ w[1])),
                     lambda h: gf.tap("no", h * 0.5), h)
    return jnp.sum(h ** 2)

  taken = float(jnp.sum(x @ W[0])) > 0
  assert taken == positive

  def reference(w, x, p):
    taps = {"in": x @ w[0] + p["in"]}
    h = taps["in"]
    if taken:
      taps["yes"], taps["no"] = h @ w[1] + p["yes"], jnp.zeros_like(h) + 0 * p["no"]
      h = jnp.tanh(taps["yes"])
    else:
      taps["yes"], taps["no"] = jnp.zeros_like(h) + 0 * p["yes"], h * 0.5 + p["no"]
      h = taps["no"]
    return jnp.sum(h ** 2), taps
  _check(model, reference, x=x, names=["in", "no", "yes"])  # branch index order: false first


def test_switch_with_the_same_tap_in_every_branch():
  def model(w, x):
    branches = [lambda h, i=i: jnp.tanh(gf.tap("b", h @ w[i])) for i in range(3)]
    return jnp.sum(jax.lax.switch(1, branches, x) ** 2)

  def reference(w, x, p):
    taps = {"b": x @ w[1] + p["b"]}
    return jnp.sum(jnp.tanh(taps["b"]) ** 2), taps
  _check(model, reference, names=["b"])


def test_a_tap_of_two_shapes_in_two_branches_is_refused():
  def model(w, x):
    return jax.lax.cond(x.sum() > 0, lambda h: gf.tap("t", h).sum(),
                        lambda h: gf.tap("t", h[0]).sum(), x)
  with pytest.raises(ValueError, match="tap 't' is in several branches"):
    capture.trace(model, (W, X))


def test_inner_jit_and_remat_with_a_policy():
  policy = jax.checkpoint_policies.save_only_these_names("kept")

  def model(w, x):
    @jax.jit
    def first(h):
      return jnp.tanh(gf.tap("h/layer_0", h @ w[0]))

    @jax.checkpoint
    def second(h):
      return jnp.tanh(gf.tap("h/layer_1", h @ w[1]))

    def third(h):
      return jnp.tanh(checkpoint_name(gf.tap("h/layer_2", h @ w[2]), "kept"))
    h = jax.checkpoint(third, policy=policy)(second(first(x)))
    return jnp.sum(h ** 2)
  tapped = capture.trace(model, (W, X))
  assert list(tapped.info) == ["h/layer_0", "h/layer_1", "h/layer_2", "kept"]

  def reference(w, x, p):  # the checkpoint_name tap "kept" sits right after h/layer_2
    h, taps = x, {}
    for i in range(3):
      taps[f"h/layer_{i}"] = h @ w[i] + p[f"h/layer_{i}"]
      h = taps[f"h/layer_{i}"]
      if i == 2:
        h = taps["kept"] = h + p["kept"]
      h = jnp.tanh(h)
    return jnp.sum(h ** 2), taps
  _check(model, reference)


def test_checkpoint_name_is_a_tap_and_keeps_its_name_for_remat_policies():
  def model(w, x):
    def block(h, wl):
      return jnp.tanh(checkpoint_name(h @ wl, "z")), None
    body = jax.checkpoint(block, policy=jax.checkpoint_policies.save_only_these_names("z"))
    return jnp.sum(jax.lax.scan(body, x, w)[0] ** 2)
  _check(model, lambda w, x, p: _unrolled(w, x, p, "z"))
  tapped = capture.trace(model, (W, X))
  program = str(jax.make_jaxpr(lambda w, p: capture.run(tapped, (w, X), p))(
      W, _probe.zero_perturbations(tapped.avals)))
  assert "name[name=z]" in program


def test_vmapped_code_keeps_its_taps():
  def model(w, x):
    per_example = jax.vmap(lambda r: jnp.tanh(gf.tap("v", r @ w[0])))
    return jnp.sum(per_example(x) ** 2)

  def reference(w, x, p):
    taps = {"v": x @ w[0] + p["v"]}
    return jnp.sum(jnp.tanh(taps["v"]) ** 2), taps
  _check(model, reference)


@jax.custom_vjp
def _doubled_rule(h, w):
  return jnp.tanh(gf.tap("cv", h @ w))


def _doubled_fwd(h, w):
  return _doubled_rule(h, w), (h, w)


def _doubled_bwd(res, ct):
  h, w = res
  ct = 2.0 * ct * (1 - jnp.tanh(h @ w) ** 2)  # twice the true derivative: the user's rule
  return ct @ w.T, h.T @ ct


_doubled_rule.defvjp(_doubled_fwd, _doubled_bwd)


@jax.custom_jvp
def _jvp_rule(h, w):
  return jnp.tanh(gf.tap("cj", h @ w))


@_jvp_rule.defjvp
def _jvp_rule_jvp(primals, tangents):
  h, w = primals
  th, tw = tangents
  out = _jvp_rule(h, w)
  return out, 2.0 * (1 - out ** 2) * (th @ w + h @ tw)  # twice the true derivative


@pytest.mark.parametrize("fn,name", [(_doubled_rule, "cv"), (_jvp_rule, "cj")])
def test_custom_vjp_and_jvp_keep_the_users_rule_for_parameters(fn, name):
  """Parameter gradients come from the user's rule (here twice the true
  derivative, as jax.grad of the model gives them); a perturbation at a tap
  inside is differentiated through the function's primal."""
  def model(w, x):
    return jnp.sum(fn(x, w[0]) ** 2)

  def reference(w, x, p):
    taps = {name: x @ w[0] + p[name]}
    return jnp.sum(jnp.tanh(taps[name]) ** 2), taps
  value, taps, gw, gp, squares = _captured(model, W, X)
  (rv, rtaps), (rgw, rgp) = jax.value_and_grad(reference, argnums=(0, 2), has_aux=True)(
      W, X, {name: jnp.zeros((5, 4))})
  np.testing.assert_allclose(value, rv, **tol())
  np.testing.assert_allclose(taps[name], rtaps[name], **tol())
  np.testing.assert_allclose(gp[name], rgp[name], **tol())
  np.testing.assert_allclose(squares[name], np.sum(np.asarray(rgp[name], np.float64) ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(gw, jax.grad(model)(W, X), **tol())  # the user's rule
  np.testing.assert_allclose(gw, 2 * rgw, **tol())


def test_a_tap_in_a_while_loop_is_refused_by_name():
  def model(w, x):
    return jax.lax.while_loop(lambda h: jnp.sum(h) < 100.0, lambda h: gf.tap("w", h * 2.0),
                              x).sum()
  with pytest.raises(ValueError, match=r"tap 'w' is inside a jax.lax.while_loop"):
    capture.trace(model, (W, X + 3.0))
  with pytest.raises(ValueError, match=r"tap 'w' is inside a jax.lax.while_loop"):
    gf.model_flow_stats(gf.probed(model, W), X + 3.0, jnp.zeros((5,), jnp.int32),
                        loss=lambda out, y: out)


def test_linen_scan_over_blocks():
  class Block(nn.Module):
    @nn.compact
    def __call__(self, h, _):
      return jnp.tanh(nn.Dense(4, use_bias=False, name="dense")(h)), None

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      blocks = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=3)
      return blocks(name="blocks")(x, None)[0]
  module = Model()
  variables = module.init(jax.random.key(0), X)
  model = gf.from_linen(module, variables)
  kernels = variables["params"]["blocks"]["dense"]["kernel"]
  tapped = model.forward.trace(model.params, X)
  assert list(tapped.info) == [f"blocks/dense{s}/layer_{i}" for i in range(3)
                               for s in ("/input", "")]

  def loss(p, pt):
    out, taps = model.forward(p, X, pt)
    return jnp.sum(out ** 2), taps
  zeros = _probe.zero_perturbations(tapped.avals)
  (_, taps), (gw, gp) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(model.params,
                                                                               zeros)

  def reference(k, p):
    h, out = X, {}
    for i in range(3):
      out[f"blocks/dense/input/layer_{i}"] = h = h + p[f"blocks/dense/input/layer_{i}"]
      out[f"blocks/dense/layer_{i}"] = z = h @ k[i] + p[f"blocks/dense/layer_{i}"]
      h = jnp.tanh(z)
    return jnp.sum(h ** 2), out
  (_, rtaps), (rk, rgp) = jax.value_and_grad(reference, argnums=(0, 1), has_aux=True)(
      kernels, zeros)
  np.testing.assert_allclose(gw["blocks"]["dense"]["kernel"], rk, **tol())
  for k in rtaps:
    np.testing.assert_allclose(taps[k], rtaps[k], **tol(), err_msg=k)
    np.testing.assert_allclose(gp[k], rgp[k], **tol(), err_msg=k)


def test_nnx_scan_over_blocks():
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.lin = nnx.Linear(4, 4, use_bias=False, rngs=rngs)

    def __call__(self, h):
      return jnp.tanh(self.lin(h))

  class Model(nnx.Module):
    def __init__(self, rngs):
      @nnx.split_rngs(splits=3)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make(rngs):
        return Block(rngs)
      self.blocks = make(rngs)

    def __call__(self, x):
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
      def step(h, block):
        return block(h)
      return step(x, self.blocks)
  net = Model(nnx.Rngs(0))
  kernels = net.blocks.lin.kernel[...]
  model = gf.from_nnx(net)
  tapped = model.forward.trace(model.params, X)
  assert [n for n in tapped.info if n.endswith(tuple(f"lin/layer_{i}" for i in range(3)))] == [
      f"blocks/lin/layer_{i}" for i in range(3)], list(tapped.info)
  zeros = _probe.zero_perturbations(tapped.avals)

  def loss(p, pt):
    out, taps = model.forward(p, X, pt)
    return jnp.sum(out ** 2), taps
  (_, taps), (_, gp) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(model.params,
                                                                              zeros)

  def reference(p):
    h, out = X, {}
    for i in range(3):
      out[f"blocks/lin/layer_{i}"] = z = h @ kernels[i] + p[f"blocks/lin/layer_{i}"]
      h = jnp.tanh(z)
    return jnp.sum(h ** 2), out
  (_, rtaps), rgp = jax.value_and_grad(reference, has_aux=True)(zeros)
  for k in rtaps:
    np.testing.assert_allclose(taps[k], rtaps[k], **tol(), err_msg=k)
    np.testing.assert_allclose(gp[k], rgp[k], **tol(), err_msg=k)


def test_shard_map_on_four_host_devices():
  out = run_on_host_devices([os.path.join(os.path.dirname(__file__), "_sharded_capture.py")])
  assert out.strip().splitlines()[-1] == "ok"


def test_two_threads_analysing_two_models_each_get_their_own_taps():
  def model_a(w, x):
    return jnp.tanh(gf.tap("a", x @ w[0]))

  def model_b(w, x):
    h, _ = jax.lax.scan(lambda h, wl: (jnp.tanh(gf.tap("b", h @ wl)), None), x, w)
    return h
  barrier = threading.Barrier(2)
  results = {}

  def analyse(key, fn):
    barrier.wait()
    for _ in range(3):
      results[key] = gf.model_flow_stats(gf.probed(fn, W), X, jnp.arange(5) % 4).names
  threads = [threading.Thread(target=analyse, args=a) for a in (("a", model_a),
                                                                ("b", model_b))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert results == {"a": ("a",), "b": ("b/layer_0", "b/layer_1", "b/layer_2")}


def test_nothing_in_the_library_assigns_to_jax_or_flax():
  root = os.path.join(os.path.dirname(__file__), "..", "gradflow_jax")
  pattern = re.compile(r"^\s*(jax|flax|nn|nnx)\.[\w.]+\s*=[^=]|setattr\((jax|flax|nn|nnx)\b")
  for folder, _, files in os.walk(root):
    for f in files:
      if f.endswith(".py"):
        with open(os.path.join(folder, f)) as fh:
          for line in fh:
            assert not pattern.search(line.split("#")[0]), (f, line)
