"""Curvature measurements against the Hessian built by ``jax.hessian`` and
diagonalized by NumPy (float64), the stability thresholds against optax's own
optimizers on a quadratic, the SLQ spectrum against the exact eigenvalues
with tolerances from the probes' own variance."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import gradflow_jax as gf

M = gf.measure
REL = 1e-3  # the bar and the convergence tolerance, relative to the largest |eigenvalue|
# converged Lanczos against eigh, relative to the largest |eigenvalue|: measured
# at most 7e-7 (float32) and 1.5e-15 (float64) on the three models
ACCURACY = {"float32": 1e-5, "float64": 1e-10}


def mlp_loss(params, batch):
  """One hidden layer of 16: tanh, or ReLU (``batch["relu"]``), with or
  without LayerNorm before it (``batch["layernorm"]``); mean squared error.
  One compiled program serves the three models (compiling is most of a
  test's time): ``jnp.where`` differentiates only the branch it selects, so
  each Hessian is exactly its model's (a model without LayerNorm has zero
  rows for the LayerNorm parameters)."""
  z = batch["x"] @ params["w1"] + params["b1"][None]
  mean, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
  normed = (z - mean) * jax.lax.rsqrt(var + 1e-5) * params["ln_scale"][None] \
      + params["ln_bias"][None]
  z = jnp.where(batch["layernorm"], normed, z)
  h = jnp.where(batch["relu"], jax.nn.relu(z), jnp.tanh(z))
  out = h @ params["w2"] + params["b2"][None]
  return 0.5 * jnp.mean(jnp.sum((out - batch["y"]) ** 2, -1))


def setup(model="tanh", dtype="float32", examples=8):
  """Parameters (212) and a batch, drawn in NumPy (no compiled programs)."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.normal(size=shape)
  params = {"w1": normal(6, 16) / np.sqrt(6), "b1": 0.3 * normal(16),
            "ln_scale": 1 + 0.2 * normal(16), "ln_bias": 0.2 * normal(16),
            "w2": normal(16, 4) / 4, "b2": 0.1 * normal(4)}
  batch = {"x": 1.5 * normal(examples, 6), "y": normal(examples, 4)}
  cast = lambda tree: {k: jnp.asarray(v, dtype) for k, v in tree.items()}
  return cast(params), {**cast(batch), "relu": jnp.asarray(model == "relu"),
                        "layernorm": jnp.asarray(model == "layernorm")}


@jax.jit
def _dense_hessian(params, batch):
  flat, unravel = ravel_pytree(params)
  return jax.hessian(lambda f: mlp_loss(unravel(f), batch))(flat)


def flat(tree):
  """A pytree as one float64 NumPy vector, in ``jax.tree.leaves`` order."""
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def exact_hessian(params, batch):
  """The dense Hessian of ``mlp_loss`` (as float64, leaves in
  ``jax.tree.leaves`` order)."""
  h = np.asarray(_dense_hessian(params, batch), np.float64)
  return (h + h.T) / 2


@jax.jit
def _curvature(params, batch, preconditioner):
  top = M.hessian_top(mlp_loss, params, batch, k=3, steps=40)
  block = M.block_sharpness(mlp_loss, params, batch, steps=40)
  pre = M.preconditioned_sharpness(mlp_loss, params, batch, preconditioner, k=2, steps=40)
  return top, block, pre


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("model", ["tanh", "relu", "layernorm"])
def test_top_block_and_preconditioned_match_eigh(model, dtype):
  """Top-3, the top of every diagonal block (leaf order) and the top-2 of
  P^{-1} H, each against NumPy's eigh of the dense Hessian (within
  ``ACCURACY`` of the largest |eigenvalue|, far inside the issue's 1e-3),
  converged, inside their own error bounds; the ReLU Hessian is
  rank-deficient (dead units, few examples)."""
  with jax.enable_x64(dtype == "float64"):
    params, batch = setup(model, dtype)
    rng = np.random.default_rng(5)
    pre = {k: jnp.asarray(0.2 + np.abs(rng.normal(size=x.shape)), dtype)
           for k, x in params.items()}
    top, block, ptop = _curvature(params, batch, pre)
    h = exact_hessian(params, batch)
  eig = np.linalg.eigvalsh(h)[::-1]
  norm = np.abs(eig).max()
  if model == "relu":
    assert np.sum(np.abs(eig) > 1e-6 * norm) < len(eig) - 32 - 16  # beyond the LayerNorm rows
  assert top.eigenvalues.dtype == jnp.dtype(dtype)
  slack = 100 * np.finfo(dtype).eps * norm
  atol = ACCURACY[dtype] * norm
  np.testing.assert_allclose(top.eigenvalues, eig[:3], rtol=0, atol=atol)
  assert np.all(np.abs(np.asarray(top.eigenvalues) - eig[:3]) <= np.asarray(top.error) + slack)
  assert np.asarray(top.converged).all()
  # the top vector is the top eigenvector: |H u - lambda u| small
  u = flat(top.vector)
  np.testing.assert_allclose(np.linalg.norm(u), 1, rtol=1e-4)
  assert np.linalg.norm(h @ u - eig[0] * u) <= 1e-2 * norm

  sizes = [x.size for x in jax.tree.leaves(params)]
  edges = np.cumsum([0] + sizes)
  want = np.array([np.linalg.eigvalsh(h[a:b, a:b])[-1] for a, b in zip(edges[:-1], edges[1:])])
  assert len(set(np.round(want, 3))) >= 4  # distinct blocks: a mix-up would show
  np.testing.assert_allclose(block.eigenvalues, want, rtol=0, atol=atol)
  assert np.asarray(block.converged).all()

  s = 1 / np.sqrt(flat(pre))
  want = np.linalg.eigvalsh(s[:, None] * h * s[None, :])[::-1][:2]
  np.testing.assert_allclose(ptop.eigenvalues, want, rtol=0,
                             atol=ACCURACY[dtype] * np.abs(want).max())
  assert np.asarray(ptop.converged).all()


def quadratic(params, d):
  """0.5 sum_i d_i p_i^2 over a pytree: Hessian diag(d)."""
  flat = ravel_pytree(params)[0]
  return 0.5 * jnp.sum(d * flat**2)


QUAD = {"a": jnp.ones((30,)), "b": jnp.ones((4, 5))}
_quad_top = jax.jit(lambda d, steps: M.hessian_top(quadratic, QUAD, d, k=2, steps=steps),
                    static_argnums=1)


def test_a_small_gap_in_two_steps_is_not_converged():
  """Eigenvalues 1, 0.995, ... 0.755: two steps cannot resolve the top one;
  the flag says so and the Ritz value is a lower bound (interlacing). Fifty
  steps (the whole space) are exact."""
  d = jnp.linspace(1.0, 0.755, 50)
  few = _quad_top(d, 2)
  assert not np.asarray(few.converged).any()
  assert 0.755 < float(few.eigenvalues[0]) < 1 - 10 * REL
  full = _quad_top(d, 50)
  np.testing.assert_allclose(full.eigenvalues, [1, 0.995], rtol=1e-5)
  assert np.asarray(full.converged).all()


def test_invariant_krylov_space_and_nonfinite_hessian():
  """A Hessian -2 I (all curvature negative): the Krylov space is invariant
  after one step; the top eigenvalue is -2 (not a 0 from the steps never
  taken), exact and converged, the second NaN and flagged. Two distinct
  eigenvalues give both. A NaN in the Hessian gives NaN, not converged."""
  top = _quad_top(jnp.full((50,), -2.0), 50)
  np.testing.assert_allclose(top.eigenvalues[0], -2, rtol=1e-6)
  assert np.isnan(top.eigenvalues[1])
  assert np.asarray(top.converged).tolist() == [True, False]
  d = jnp.where(jnp.arange(50) < 20, 3.0, -2.0)
  np.testing.assert_allclose(_quad_top(d, 50).eigenvalues, [3, -2], rtol=1e-5)
  bad = _quad_top(d.at[7].set(jnp.nan), 50)
  assert np.isnan(bad.eigenvalues).all() and not np.asarray(bad.converged).any()


def test_warm_start_converges_where_a_cold_start_does_not():
  """Three Lanczos steps from a fixed vector miss the top eigenvalue (not
  converged); from the top eigenvector moved by 1% (the previous training
  step's), three steps converge; restarted three steps at a time from their
  own previous top vector they converge too, to eigh's value."""
  params, batch = setup("tanh")
  eig, vecs = np.linalg.eigh(exact_hessian(params, batch))
  eig = eig[::-1]
  three = jax.jit(lambda p, b, v0: M.hessian_top(mlp_loss, p, b, steps=3, v0=v0))
  moved = vecs[:, -1] + 0.01 * np.random.default_rng(3).normal(size=len(eig)) / np.sqrt(len(eig))
  near = three(params, batch, ravel_pytree(params)[1](jnp.asarray(moved, jnp.float32)))
  assert bool(near.converged[0])
  np.testing.assert_allclose(near.eigenvalues[0], eig[0], rtol=REL)
  cold = three(params, batch, jax.tree.map(jnp.ones_like, params))
  assert not bool(cold.converged[0])
  assert abs(float(cold.eigenvalues[0]) - eig[0]) > REL * eig[0]
  warm = cold
  for _ in range(12):
    warm = three(params, batch, warm.vector)
  assert bool(warm.converged[0])
  np.testing.assert_allclose(warm.eigenvalues[0], eig[0], rtol=REL)


def test_hvp_matches_the_dense_hessian():
  params, batch = setup("layernorm")
  v = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)), params)
  hv = flat(jax.jit(M.hvp, static_argnums=0)(mlp_loss, params, batch, v))
  np.testing.assert_allclose(hv, exact_hessian(params, batch) @ flat(v), rtol=1e-4, atol=1e-5)


def test_spectrum_moments_trace_top_and_density():
  """SLQ on 24 Rademacher probes: the quadrature's first two moments are
  Hutchinson samples of tr(H)/n and tr(H^2)/n, whose standard errors follow
  from H (Var v^T A v = 2 (|A|_F^2 - sum_i A_ii^2) for Rademacher v): each
  within 4 of them. The trace agrees with the exact one and with Hutchinson
  on 4096 probes; the top values are lower bounds of eigh's (interlacing)
  and equal them where converged; the broadened density integrates to 1
  with the same mean and variance + sigma^2."""
  probes = 24
  params, batch = setup("tanh")
  spec = jax.jit(lambda p, b: M.hessian_spectrum(mlp_loss, p, b, jax.random.key(1),
                                                 num_probes=probes, steps=24, k=4))(params, batch)
  h = exact_hessian(params, batch)
  n = h.shape[0]
  eig = np.linalg.eigvalsh(h)[::-1]
  nodes, weights = np.asarray(spec.nodes, np.float64), np.asarray(spec.weights, np.float64)
  np.testing.assert_allclose(weights.sum(-1), 1, rtol=1e-5)
  rademacher_se = lambda a: np.sqrt(2 * (np.sum(a**2) - np.sum(np.diag(a) ** 2)) / probes)
  for power, a in ((1, h), (2, h @ h)):
    moment = np.mean(np.sum(weights * nodes**power, -1))
    rounding = 1e-5 * np.abs(eig[0]) ** power
    assert abs(moment - np.trace(a) / n) <= 4 * rademacher_se(a) / n + rounding

  se = rademacher_se(h)
  assert abs(float(spec.trace) - np.trace(h)) <= 4 * se
  # the sample std of 24 near-Gaussian samples: within 15% of the true one (1 sd)
  assert 0.5 * se < float(spec.trace_stderr) < 2 * se

  @jax.jit
  @jax.vmap
  def hutchinson(key):
    v = ravel_pytree(params)[1](jax.random.rademacher(key, (n,), jnp.float32))
    return ravel_pytree(v)[0] @ ravel_pytree(M.hvp(mlp_loss, params, batch, v))[0]
  keys = jax.random.split(jax.random.key(2), 4096)
  hutch = hutchinson(keys)
  hutch_se = float(np.std(hutch, ddof=1)) / np.sqrt(len(keys))
  assert abs(float(np.mean(hutch)) - np.trace(h)) <= 4 * hutch_se
  assert abs(float(spec.trace) - float(np.mean(hutch))) <= 4 * np.hypot(se, hutch_se)

  top, conv = np.asarray(spec.top), np.asarray(spec.converged)
  assert conv[0] and np.all(top <= eig[:4] + 1e-5 * eig[0])
  np.testing.assert_allclose(top[conv], eig[:4][conv], rtol=0, atol=REL * eig[0])

  sigma = 0.05 * (eig[0] - eig[-1])
  grid = np.linspace(eig[-1] - 8 * sigma, eig[0] + 8 * sigma, 4001)
  rho = np.asarray(M.spectral_density(spec, jnp.asarray(grid, jnp.float32), sigma), np.float64)
  mean = np.mean(np.sum(weights * nodes, -1))
  second = np.mean(np.sum(weights * nodes**2, -1))
  np.testing.assert_allclose(np.trapezoid(rho, grid), 1, rtol=1e-4)
  np.testing.assert_allclose(np.trapezoid(rho * grid, grid), mean, rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(np.trapezoid(rho * grid**2, grid), second + sigma**2, rtol=1e-3)


def test_adam_preconditioner_is_the_one_optax_divides_by():
  """After a few optax.adam steps, optax's update is -lr P^{-1} mu with P
  from the state (momentum and second-moment bias corrections in P)."""
  lr, b1, b2, eps = 0.01, 0.9, 0.99, 1e-6
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
  state = opt.init(params)
  for i in range(3):
    grads = jax.tree.map(lambda x: jnp.sin(x + i), params)
    updates, state = opt.update(grads, state)
  p = M.adam_preconditioner(state[0], b1=b1, b2=b2, eps=eps)
  want = jax.tree.map(lambda m, q: -lr * m / q, state[0].mu, p)
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5)
  same = M.adam_preconditioner((state[0].nu, state[0].count), b1=b1, b2=b2, eps=eps)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), p, same))


@pytest.mark.parametrize("name", ["gd", "heavy_ball", "nesterov", "adam_frozen"])
def test_stability_thresholds_separate_optax_converging_from_diverging(name):
  """optax's own optimizer on f(x) = lambda x^2 / 2: at 0.97 times the
  threshold x shrinks, at 1.03 times it grows (frozen Adam: the EMA
  momentum of ``optax.ema`` with P = 1, as Cohen et al. 2022 analyse it)."""
  lr, beta = 0.1, 0.9
  opt, threshold = {
      "gd": (optax.sgd(lr), M.stability_threshold(lr)),
      "heavy_ball": (optax.sgd(lr, momentum=beta), M.stability_threshold(lr, momentum=beta)),
      "nesterov": (optax.sgd(lr, momentum=beta, nesterov=True),
                   M.stability_threshold(lr, momentum=beta, nesterov=True)),
      "adam_frozen": (optax.chain(optax.ema(beta, debias=False), optax.scale(-lr)),
                      M.adam_stability_threshold(lr, b1=beta))}[name]
  if name == "adam_frozen":
    np.testing.assert_allclose(threshold, 38 / lr, rtol=1e-6)

  @jax.jit
  @jax.vmap
  def final(curvature):
    def step(carry, _):
      x, s = carry
      u, s = opt.update(curvature * x, s, x)
      return (x + u, s), None
    x0 = jnp.ones(())
    return jnp.abs(jax.lax.scan(step, (x0, opt.init(x0)), length=200)[0][0])
  shrunk, grown = np.asarray(final(jnp.asarray([0.97, 1.03]) * threshold))
  assert shrunk < 1e-2 and grown > 1e2


@pytest.mark.parametrize("call, match", [
    (lambda p, b: M.hessian_top(mlp_loss, p, b, k=5, steps=4), "k <="),
    (lambda p, b: M.hessian_top(mlp_loss, p, b, steps=0), "steps a positive int"),
    (lambda p, b: M.hessian_top(mlp_loss, p, b, tol=0.0), "tol > 0"),
    (lambda p, b: M.hessian_top(mlp_loss, p, b, v0={"w1": jnp.ones(3)}), "v0 a pytree like"),
    (lambda p, b: M.preconditioned_sharpness(mlp_loss, p, b, {"a": 1.0}), "preconditioner"),
    (lambda p, b: M.hessian_spectrum(mlp_loss, p, b, jax.random.key(0), num_probes=0),
     "num_probes"),
    (lambda p, b: M.hessian_top(mlp_loss, {**p, "i": jnp.ones(2, int)}, b), "floating leaves"),
])
def test_bad_arguments_raise_before_tracing(call, match):
  params, batch = setup()
  with pytest.raises(ValueError, match=match):
    call(params, batch)
