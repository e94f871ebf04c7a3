"""Local Jacobians between the taps of any probed model, per example.

For tap k, J_k = d tap_k / d tap_j, every other tap held fixed, where tap j
(its source) is the latest tap (or the input) that k reads directly, without
passing another tap. For a chain of layers it is the layer-to-layer Jacobian;
parallel branches (query/key/value projections reading one tensor) each get
their own from that tensor, never chained to one another; in a residual
stream the source is the branch just before (the stream's earlier branches
are held fixed).

How: each tap passes on ``stop_gradient(value) + perturbation`` (see
``_probe.cutting``), so one jvp with tangents at every tap gives every
J_k v at once and one vjp every J_k^T u. Which taps feed which is found once,
by jvps from each tap; links that share an upstream tap go to different
rounds (a vjp would otherwise mix them). Then block Lanczos on J_k^T J_k
runs for every (tap, example) block of a round at once. The model is
linearized once and each round's linear map is restricted to its sources,
so a step of a round costs only its links (the operations between its
sources and the next cuts): in all, about steps x (one jvp + one vjp of the
model) however many rounds there are, plus one forward pass.

The Lanczos recurrence runs without reorthogonalisation (no basis is kept: a
basis of every tap's vectors did not fit the cost): in floating point that
produces duplicate Ritz values but leaves the largest one accurate (Paige
1976; Golub & Van Loan, section 10.3), and a breakdown (an invariant
subspace, as on rank-deficient ReLU Jacobians) ends the block's iteration.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax import _model_stats, _probe

INPUT = "<input>"
LANCZOS_STEPS = 32


class TapJacobians(NamedTuple):
  """Local Jacobian norms of a model's taps.

  Attributes:
    names: tap names, in recording order.
    sources: per tap, its source: the latest tap (or ``"<input>"``) it reads
      directly; empty when none is tapped (integer inputs, a dict input).
    norm: (batch, n_taps) ||J_k||_2 per example (NaN where a tap has no
      source). When the examples interact (BatchNorm in training mode) each
      row holds the norm of the whole batch's Jacobian.
    converged: (batch, n_taps) bool; False where Lanczos had not converged
      in its steps: such a value is an estimate, not a measurement.
    per_example: False when the examples interact.
  """
  names: tuple[str, ...]
  sources: tuple[tuple[str, ...], ...]
  norm: jax.Array
  converged: jax.Array
  per_example: bool


def _float_input(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.inexact)


def _cut_forward(forward, params, x, names, with_input, roles=()):
  """points (dict: tap -> perturbation, INPUT -> input shift) -> raw taps."""
  def f(points):
    xin = x + points[INPUT].astype(x.dtype) if with_input else x
    with _probe.cutting(roles):
      _, taps = forward(params, xin, {n: points[n] for n in names})
    return {n: taps[n] for n in names}
  return f


def _points(shapes, names, x, with_input):
  pts = {n: jnp.zeros(shapes[n].shape, shapes[n].dtype) for n in names}
  if with_input:
    pts[INPUT] = jnp.zeros(x.shape, x.dtype)
  return pts


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _dependencies(forward, params, x, info, with_input, roles):
  """(n_sources, n_taps) bool: direct dependence on example 0 (a tangent at the
  source reaches the tap), and whether that tangent reaches another example
  (the examples interact). A tap whose Jacobian is exactly 0 on example 0 (all
  its units dead there) is given the previous tap as its source."""
  names = [i.name for i in info]
  shapes = _probe.discover_taps(_probe.ProbedModel(forward, params), x).shapes
  f = _cut_forward(forward, params, x, names, with_input, roles)
  zeros = _points(shapes, names, x, with_input)
  sources = ([INPUT] if with_input else []) + names
  key = jax.random.key(7)

  def from_source(i):
    def tangent(j, n):  # a fixed non-constant pattern on example 0 of source j only
      shape = zeros[n].shape
      v = jnp.sin(jnp.arange(int(np.prod(shape)), dtype=jnp.float32) * 12.9898 + j).reshape(shape)
      v = v * (jnp.arange(shape[0]) == 0).reshape((-1,) + (1,) * (len(shape) - 1))
      return jnp.where(i == j, v, 0).astype(zeros[n].dtype)
    out = jax.jvp(f, (zeros,), ({n: tangent(j, n) for j, n in enumerate(sources)},))[1]
    reads = jnp.stack([jnp.any(out[n][:1] != 0) for n in names])
    others = jnp.stack([jnp.any(out[n][1:] != 0) for n in names])
    return reads, others
  return jax.lax.map(from_source, jnp.arange(len(sources)))


def _rounds(deps: np.ndarray, sources: list[str], names: list[str]):
  """Each link (tap k <- its source) goes to the first round where its source
  is not used yet and no source injected there reaches k directly (nor k's
  source another link's tap): one jvp and one vjp then separate every link of
  the round."""
  offset = len(sources) - len(names)
  rounds: list[list[int]] = []
  used: list[set] = []
  src_of = []
  for k in range(len(names)):
    direct = np.nonzero(deps[:, k])[0]
    # the latest tap it reads directly (in a residual stream that is the branch
    # just before it, not every earlier branch that the stream still carries)
    s = {int(direct[-1])} if direct.size else set()
    if not s and k > 0:  # J exactly 0 on example 0 (all units dead there): the previous tap
      s = {offset + k - 1}
    src_of.append(s)
    if not s:
      continue
    (j,) = s
    for r, u in enumerate(used):
      clash = j in u or any(deps[i, k] for i in u) or any(deps[j, m] for m in rounds[r])
      if not clash:
        rounds[r].append(k)
        u.add(j)
        break
    else:
      rounds.append([k])
      used.append({j})
  return rounds, src_of


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6, 7, 8, 9))
def _lanczos(forward, params, x, info, with_input, roles, per_example, steps, tol, rounds):
  """Block Lanczos on J_k^T J_k for every (tap, example) block of every round.

  ``rounds``: per round, the links (tap index, source index). The model is
  linearized once; each round then gets its own linear map restricted to its
  sources (the other tangents are symbolic zeros), so JAX keeps only the
  operations between those sources and the next cuts: a round costs its
  links, not the whole model.
  Returns (n_taps, batch) norms and converged flags (NaN/False off-round)."""
  names = [i.name for i in info]
  shapes = _probe.discover_taps(_probe.ProbedModel(forward, params), x).shapes
  f = _cut_forward(forward, params, x, names, with_input, roles)
  zeros = _points(shapes, names, x, with_input)
  sources = ([INPUT] if with_input else []) + names
  batch = jax.tree.leaves(x)[0].shape[0]
  n_taps = len(names)
  _, jvp_all = jax.linearize(f, zeros)
  eps = jnp.finfo(jnp.float32).eps
  norms = jnp.full((n_taps, batch), jnp.nan)
  conv = jnp.zeros((n_taps, batch), bool)

  for r, links in enumerate(rounds):
    src = [sources[j] for _, j in links]
    taps = [names[k] for k, _ in links]
    fixed = {n: zeros[n] for n in sources if n not in set(src)}

    def restricted(t_src, fixed=fixed, taps=taps):
      out = jvp_all({**fixed, **t_src})
      return {t: out[t] for t in taps}

    start = {n: zeros[n] for n in src}
    _, jvp_r = jax.linearize(restricted, start)
    vjp_r = jax.linear_transpose(jvp_r, start)

    def operator(v, src=src, taps=taps, jvp_r=jvp_r, vjp_r=vjp_r):
      t = {n: p.reshape(zeros[n].shape).astype(zeros[n].dtype) for n, p in zip(src, v)}
      u = jvp_r(t)
      back = vjp_r({k: u[k] for k in taps})[0]
      return [back[n].reshape(batch, -1).astype(jnp.float32) for n in src]

    def dots(a, b):  # -> (links, batch)
      out = jnp.stack([jnp.sum(p * q, axis=-1) for p, q in zip(a, b)])
      return out if per_example else jnp.sum(out, 1, keepdims=True) * jnp.ones((1, batch))

    def scaled(c, xs):  # per link (batch,) scale times its vectors
      return [p * c[i][:, None] for i, p in enumerate(xs)]

    keys = jax.random.split(jax.random.key(r), len(src))
    v = [jax.random.normal(keys[i], (batch, int(np.prod(zeros[n].shape[1:]))))
         for i, n in enumerate(src)]
    v = scaled(jax.lax.rsqrt(jnp.maximum(dots(v, v), 1e-30)), v)
    # a data dependence on the previous round runs the rounds one after
    # another: XLA's CPU runtime otherwise starts independent loops at once,
    # and on a small thread pool they can wait on each other forever
    v = [p + 0 * jnp.nan_to_num(norms[0, 0]) for p in v]
    zero = jnp.zeros((len(src), batch))
    dim = max(p.shape[-1] for p in v)

    def body(i, state, operator=operator, dots=dots, scaled=scaled, dim=dim):
      alphas, betas, v, v_prev, beta, scale, done = state
      w = operator(v)
      alpha = dots(v, w)
      w = [a - b - c for a, b, c in zip(w, scaled(alpha, v), scaled(beta, v_prev))]
      beta_new = jnp.sqrt(jnp.maximum(dots(w, w), 0))
      scale = jnp.maximum(scale, jnp.abs(alpha) + beta + beta_new)
      done = done | (beta_new <= 64 * eps * np.sqrt(dim) * scale)
      beta_new = jnp.where(done, 0, beta_new)
      inv = jnp.where(done, 0, 1 / jnp.where(done, 1, beta_new))
      return (alphas.at[i].set(alpha), betas.at[i].set(beta_new), scaled(inv, w), v, beta_new,
              scale, done)

    init = (jnp.zeros((steps,) + zero.shape), jnp.zeros((steps,) + zero.shape), v,
            [jnp.zeros_like(p) for p in v], zero, zero, jnp.zeros(zero.shape, bool))
    alphas, betas, _, _, _, _, done = jax.lax.fori_loop(0, steps, body, init)
    sigma, ok = _ritz(jnp.moveaxis(alphas, 0, -1), jnp.moveaxis(betas, 0, -1), done, tol)
    idx = jnp.asarray([k for k, _ in links])
    norms = norms.at[idx].set(sigma)
    conv = conv.at[idx].set(ok)
  return norms.T, conv.T


def _ritz(a, b, done, tol):
  """Largest Ritz value of each tridiagonal (alphas a, betas b, last axis:
  steps) and whether it has converged."""
  tri = (jax.vmap(jax.vmap(jnp.diag))(a) + jax.vmap(jax.vmap(lambda t: jnp.diag(t[:-1], 1)))(b)
         + jax.vmap(jax.vmap(lambda t: jnp.diag(t[:-1], -1)))(b))
  theta, vecs = jnp.linalg.eigh(tri)
  top = jnp.maximum(theta[..., -1], 0)
  residual = jnp.abs(b[..., -1] * vecs[..., -1, -1])
  # eigenvalue error <= residual^2 / gap (Parlett, The Symmetric Eigenvalue
  # Problem, thm 11.7.1), the gap taken to the next distinct Ritz value
  gap = theta[..., -1] - theta[..., -2]
  error = jnp.minimum(residual, residual**2 / jnp.maximum(gap, 1e-30))
  distinct = gap > 1e-3 * top  # a duplicate (no reorthogonalisation) says nothing
  error = jnp.where(distinct, error, residual)
  return jnp.sqrt(top), (error <= tol * top) | done


def tap_jacobian_norms(model: _probe.ProbedModel, x, steps: int = LANCZOS_STEPS,
                       tol: float = 1e-3, roles: tuple[str, ...] | None = None) -> TapJacobians:
  """Spectral norm of each tap's local Jacobian, per example (see the module
  docstring). Matrix-free: never forms a Jacobian. Two compiled programs (which
  taps feed which, then Lanczos); the inputs are used as given (integer
  tokens and dict inputs work; the input is a source only when it is one
  float array).

  Args:
    model: a :class:`ProbedModel`.
    x: a batch (leading axis: examples).
    steps: Lanczos steps (the Krylov dimension) per block.
    tol: relative Ritz residual under which a block counts as converged.
    roles: only taps of these roles are measured (and cut): ``("post",)``
      gives layer input to next layer input, d a_l / d a_(l-1) = D_l W_l for
      an MLP. All taps when ``None``.
  """
  info, shapes = _model_stats.discover(model, x)
  roles = tuple(roles or ())
  if roles:
    info = tuple(i for i in info if i.role in roles)
    if not info:
      raise ValueError(f"expected taps with roles {roles}, got none")
  names = [i.name for i in info]
  with_input = _float_input(x)
  sources = ([INPUT] if with_input else []) + names
  first, others = jax.device_get(_dependencies(model.forward, model.params, x, info, with_input, roles))
  batch = jax.tree.leaves(x)[0].shape[0]
  per_example = not bool(np.any(others)) and all(
      s.shape[:1] == (batch,) for s in shapes.values())
  rounds, src_of = _rounds(np.asarray(first), sources, names)
  src_names = tuple(tuple(sources[j] for j in sorted(s)) for s in src_of)
  if not rounds:
    nan = jnp.full((batch, len(names)), jnp.nan)
    return TapJacobians(tuple(names), src_names, nan, jnp.zeros(nan.shape, bool), per_example)
  links = tuple(tuple((k, next(iter(src_of[k]))) for k in r) for r in rounds)
  steps = max(2, int(steps))
  norm, conv = _lanczos(model.forward, model.params, x, info, with_input, roles, per_example, steps,
                        float(tol), links)
  has_source = jnp.asarray([bool(s) for s in src_of])[None]
  return TapJacobians(tuple(names), src_names, jnp.where(has_source, norm, jnp.nan),
                      conv & has_source, per_example)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _hutchinson(forward, params, x, target, probes):
  def f(xin):
    return forward(params, xin, None)[1][target]
  keys = jax.random.split(jax.random.key(3), probes)

  def one(key):
    v = jax.random.normal(key, x.shape, jnp.float32).astype(x.dtype)
    out = jax.jvp(f, (x,), (v,))[1].astype(jnp.float32)
    return jnp.sum(out.reshape(out.shape[0], -1) ** 2, axis=-1)
  return jnp.mean(jax.lax.map(one, keys), axis=0)


def input_output_mean_sq_singular_value(model: _probe.ProbedModel, x, target: str | None = None,
                                        probes: int = 8):
  """Per example, ||J||_F^2 / k for J = d target / d x (k = min(in, out)
  features per example): the quantity mean-field theory predicts as chi_1^L,
  whose healthy value is about 1. Hutchinson's estimator, E||J v||^2 =
  ||J||_F^2 for v ~ N(0, I), averaged over ``probes`` jvps (relative standard
  error about sqrt(2 / (probes k)) for a well-spread spectrum).

  ``target`` defaults to the last ``post`` tap (the input of the last weight
  layer, the built-in MLP's h_L), else the last ``tap``-role tap. Returns ``(target, (batch,) array)``, or
  ``(None, None)`` when the input is not one float array or the model has no
  such tap. Where examples interact (BatchNorm in training mode) the
  estimate includes the cross-example terms.
  """
  if not _float_input(x):
    return None, None
  info, shapes = _model_stats.discover(model, x)
  if target is None:
    post = [i.name for i in info if i.role == "post"] or [i.name for i in info if i.role == "tap"]
    if not post:
      return None, None
    target = post[-1]
  n_out = int(np.prod(shapes[target].shape[1:]))
  n_in = int(np.prod(x.shape[1:]))
  fro = _hutchinson(model.forward, model.params, x, target, int(probes))
  return target, fro / min(n_in, n_out)
