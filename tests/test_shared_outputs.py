"""Scans that write each distinct per-layer value out once (_shared_outputs)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import gradflow_jax as gf
from gradflow_jax.capture import _probed as _probe
from gradflow_jax.capture._shared_outputs import share_scan_outputs


def _scan_ys_counts(fn, *args):
  """The number of stacked outputs (ys) of each scan in ``fn``'s jaxpr,
  inner jitted calls included, in order."""
  counts = []

  def walk(jaxpr):
    for e in jaxpr.eqns:
      if e.primitive.name == "scan":
        counts.append(len(e.outvars) - e.params["num_carry"])
      inner = e.params.get("jaxpr")
      if e.primitive.name != "scan" and hasattr(inner, "jaxpr"):
        walk(inner.jaxpr)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return counts


def _body(h, w):
  a = jnp.sin(h @ w)
  b = jnp.sin(h @ w)  # equal to a: merged inside the body
  return h + a, (a, b, a * 2, a)


def test_duplicate_outputs_of_a_scan_are_written_once_with_the_same_numbers():
  ws = jax.random.normal(jax.random.key(0), (5, 3, 3))
  x = jax.random.normal(jax.random.key(1), (2, 3))

  def fn(ws, x):
    h, ys = jax.lax.scan(_body, x, ws)
    return h, ys

  shared = share_scan_outputs(fn)
  assert _scan_ys_counts(fn, ws, x) == [4]
  assert _scan_ys_counts(shared, ws, x) == [2]  # a (= b, the last), a * 2
  want = jax.jit(fn)(ws, x)
  got = jax.jit(shared)(ws, x)
  chex.assert_trees_all_equal(got, want)


def test_scans_inside_jitted_calls_closed_over_tracers_and_vmap():
  """A scan inside an inner jit is rewritten too; a value the function
  closes over from the caller's trace, and a vmap around it, pass through."""
  ws = jax.random.normal(jax.random.key(0), (3, 4, 3, 3))
  x = jax.random.normal(jax.random.key(1), (2, 3))

  def outer(ws, x, scale):
    @jax.jit
    def fn(ws, x):
      h, ys = jax.lax.scan(_body, x * scale, ws)
      return h, ys
    plain = jax.vmap(lambda w: fn(w, x))(ws)
    shared = jax.vmap(lambda w: share_scan_outputs(fn)(w, x))(ws)
    return plain, shared
  assert _scan_ys_counts(lambda ws, x: share_scan_outputs(
      jax.jit(lambda w, x: jax.lax.scan(_body, x, w)))(ws[0], x), ws, x) == [2]
  plain, shared = jax.jit(outer)(ws, x, 0.5)
  chex.assert_trees_all_equal(shared, plain)


def test_effects_are_not_merged():
  """Two equal callbacks in a body both run: an equation with effects is
  never merged with another."""
  calls = []

  def body(h, w):
    jax.debug.callback(lambda v: calls.append(1), h)
    jax.debug.callback(lambda v: calls.append(1), h)
    return h @ w, None

  ws = jnp.ones((3, 2, 2))
  jax.block_until_ready(share_scan_outputs(lambda ws: jax.lax.scan(body, jnp.ones(2), ws))(ws))
  assert len(calls) == 2 * 3


def test_a_tap_that_is_a_residual_adds_no_output_to_the_forward_loop():
  """The monitored pass of a scan whose taps are layer inputs (each also a
  residual of the next matmul, for the weight gradient): its forward loop
  writes as many stacked outputs as the bare value_and_grad's, and the
  gradients and ||dL/d tap|| equal jax.grad's."""
  ws = jax.random.normal(jax.random.key(0), (4, 6, 6)) / np.sqrt(6)
  x = jax.random.normal(jax.random.key(1), (3, 6))

  def loss(ws, x):
    def layer(h, w):
      return jnp.tanh(gf.tap("h", h) @ w), None
    h, _ = jax.lax.scan(layer, x, ws)
    return jnp.sum(h ** 2)

  bare = _scan_ys_counts(lambda ws, x: jax.value_and_grad(loss)(ws, x), ws, x)
  shapes = _probe.discover_taps(gf.probed(loss, ws), x).shapes
  slots = _probe.norm_slots(shapes)

  def tapped(ws, x, slots):
    grad = jax.value_and_grad(lambda w, p: gf.probed(loss, w).forward(w, x, p, how="norms")[0],
                              argnums=(0, 1))
    return share_scan_outputs(grad)(ws, slots)
  counts = _scan_ys_counts(tapped, ws, x, slots)
  assert counts[0] == bare[0], (counts, bare)  # the forward loop

  (value, (g, squares)) = jax.jit(tapped)(ws, x, slots)
  want_value, want_g = jax.value_and_grad(loss)(ws, x)
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  np.testing.assert_allclose(g, want_g, rtol=1e-5, atol=1e-7)
  full = jax.grad(lambda p: gf.probed(loss, ws).forward(ws, x, p)[0])(
      _probe.zero_perturbations(shapes))
  got = _probe.slot_values(squares, list(shapes))
  want = [np.sum(np.asarray(full[n], np.float64) ** 2) for n in shapes]
  np.testing.assert_allclose(got, want, rtol=1e-5)
