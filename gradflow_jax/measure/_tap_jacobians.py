"""Local Jacobians between the taps of any probed model, per example.

For tap k, J_k = d tap_k / d tap_j, every other tap held fixed, where tap j
(its source) is the latest tap (or the input) that k reads directly, without
passing another tap. For a chain of layers it is the layer-to-layer Jacobian;
parallel branches (query/key/value projections reading one tensor) each get
their own from that tensor, never chained to one another; in a residual
stream the source is the branch just before (the stream's earlier branches
are held fixed).

How: each tap passes on ``stop_gradient(value) + perturbation`` (see
``how="cut"``), so one jvp with tangents at every tap gives every
J_k v at once and one vjp every J_k^T u. Which taps feed which is found once,
by jvps from each tap (one tap per example, so a jvp tests as many taps as
the batch has examples); links that share an upstream tap go to different
rounds (a vjp would otherwise mix them). Then block Lanczos on J_k^T J_k
runs for every (tap, example) block of every round at once, in one loop.
The model is linearized once and each round's linear map is restricted to
its sources, so a step of a round costs only its links (the operations
between its sources and the next cuts): in all, about steps x (one jvp + one
vjp of the model) however many rounds there are, plus one forward pass.

The Lanczos loop is ``_linalg.lanczos`` without reorthogonalisation (no
basis is kept: a basis of every tap's vectors did not fit the cost).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax.measure import _backend
from gradflow_jax.capture import _probed as _probe
from gradflow_jax.measure import _linalg, _model_stats

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

  def as_dict(self) -> dict:
    """The results.json layout (``names`` are the statistics' taps)."""
    return {"sources": [list(s) for s in self.sources], "norm": self.norm,
            "converged": self.converged, "per_example": self.per_example}


def _float_input(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.inexact)


def _cut_forward(forward, params, x, names, with_input, roles=()):
  """points (dict: tap -> perturbation, INPUT -> input shift) -> raw taps."""
  def f(points):
    xin = x + points[INPUT].astype(x.dtype) if with_input else x
    _, taps = forward(params, xin, {n: points[n] for n in names}, how="cut", cut=roles)
    return {n: taps[n] for n in names}
  return f


def _points(shapes, names, x, with_input):
  pts = {n: jnp.zeros(shapes[n].shape, shapes[n].dtype) for n in names}
  if with_input:
    pts[INPUT] = jnp.zeros(x.shape, x.dtype)
  return pts


@_backend.tuned_jit(0, static_argnums=(0, 3, 4, 5, 6))
def _hits(forward, params, x, info, with_input, roles, slots):
  """(n_jvps, n_taps, batch) bool: which examples of each tap a jvp reaches.

  ``slots`` = 1: jvp j puts a fixed non-constant pattern on example 0 of
  source j alone. ``slots`` > 1 (one source per example): with m =
  ceil(n_sources / slots), jvp j // slots puts source j on example
  j % slots, jvp m + j // slots puts it on example (j + 1) % slots (each
  source is tested on two examples), and a last jvp puts every source on
  example 0 (do the examples interact?)."""
  names = [i.name for i in info]
  shapes = _probe.discover_taps(_probe.ProbedModel(forward, params), x).shapes
  f = _cut_forward(forward, params, x, names, with_input, roles)
  zeros = _points(shapes, names, x, with_input)
  sources = ([INPUT] if with_input else []) + names
  m = -(-len(sources) // slots)
  n_jvps = 2 * m + 1 if slots > 1 else m
  lead = lambda shape: shape[0] if shape else 1
  width = max(lead(zeros[n].shape) for n in names)
  groups: dict = {}  # sources of one shape and dtype: one pattern and one select per jvp
  for j, n in enumerate(sources):
    groups.setdefault((zeros[n].shape, zeros[n].dtype), []).append(j)

  def jvp(t):
    tangents = {}
    for (shape, dtype), js in groups.items():
      ids = jnp.asarray(js)[:, None]
      v = jnp.sin(jnp.arange(int(np.prod(shape)), dtype=jnp.float32)[None] * 12.9898
                  + ids.astype(jnp.float32)).reshape(len(js), lead(shape), -1)
      example = jnp.arange(lead(shape))[None]
      on = (example == ids % slots) & (ids // slots == t)
      if slots > 1:
        on = on | ((example == (ids + 1) % slots) & (ids // slots + m == t))
        on = on | ((example == 0) & (t == n_jvps - 1))
      stack = jnp.where(on[..., None], v, 0).reshape((len(js),) + shape).astype(dtype)
      tangents.update({sources[j]: stack[k] for k, j in enumerate(js)})
    out = jax.jvp(f, (zeros,), (tangents,))[1]
    hits = jnp.zeros((len(names), width), bool)
    by_shape: dict = {}
    for k, n in enumerate(names):
      by_shape.setdefault(out[n].shape, []).append(k)
    for shape, ks in by_shape.items():
      hit = jnp.stack([out[names[k]] for k in ks]).reshape(len(ks), lead(shape), -1) != 0
      hits = hits.at[np.asarray(ks), :lead(shape)].set(jnp.any(hit, axis=-1))
    return hits
  return jax.lax.map(jvp, jnp.arange(n_jvps))


def _dependencies(model, x, info, with_input, roles, shapes):
  """(n_sources, n_taps) bool: direct dependence (a tangent at the source
  reaches the tap, on either of the two examples it is tested on), and
  whether the examples interact (a tangent on one example reaches another).
  When every tap has the batch as its leading axis one jvp tests one source
  per example (batch sources at once; see ``_hits``); if the examples do
  interact, every source is tested alone on example 0."""
  batch = jax.tree.leaves(x)[0].shape[0]
  n_sources = len(info) + with_input
  batched = all(s.shape[:1] == (batch,) for s in shapes.values())
  slots = batch if batched and batch > 1 else 1
  hits = np.asarray(jax.device_get(
      _hits(model.forward, model.params, x, info, with_input, roles, slots)))
  j = np.arange(n_sources)
  if slots > 1 and not np.any(hits[-1][:, 1:]):
    m = -(-n_sources // slots)
    return hits[j // slots, :, j % slots] | hits[m + j // slots, :, (j + 1) % slots], False
  if slots > 1:  # the examples interact: one source at a time
    hits = np.asarray(jax.device_get(
        _hits(model.forward, model.params, x, info, with_input, roles, 1)))
  return hits[j, :, 0], bool(np.any(hits[:, :, 1:]))


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
    if not s and k > 0:  # J exactly 0 on the example tested (all units dead): the previous tap
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


@_backend.tuned_jit(1, static_argnums=(0, 3, 4, 5, 6, 7, 8, 9))
def _lanczos(forward, params, x, info, with_input, roles, per_example, steps, tol, rounds):
  """Block Lanczos on J_k^T J_k for every (tap, example) block of every round.

  ``rounds``: per round, the links (tap index, source index). The model is
  linearized once; each round then gets its own linear map restricted to its
  sources (the other tangents are symbolic zeros), so JAX keeps only the
  operations between those sources and the next cuts: a round costs its
  links, not the whole model. All rounds step in one loop, and the vectors of
  links of one size are stacked into one array (one random draw, one dot, one
  update per size), so the program grows with the number of sizes rather
  than the number of links.
  Returns (n_taps, batch) norms and converged flags (NaN/False off-round)."""
  names = [i.name for i in info]
  shapes = _probe.discover_taps(_probe.ProbedModel(forward, params), x).shapes
  f = _cut_forward(forward, params, x, names, with_input, roles)
  zeros = _points(shapes, names, x, with_input)
  sources = ([INPUT] if with_input else []) + names
  batch = jax.tree.leaves(x)[0].shape[0]
  _, jvp_all = jax.linearize(f, zeros)

  # every link's place: group (its source's size per example) and row in it
  links = [(r, k, j) for r, rl in enumerate(rounds) for k, j in rl]
  size = lambda j: int(np.prod(zeros[sources[j]].shape[1:]))
  dims = sorted({size(j) for _, _, j in links})
  members = [[n for n, (_, _, j) in enumerate(links) if size(j) == d] for d in dims]
  place = {n: (g, i) for g, m in enumerate(members) for i, n in enumerate(m)}
  order = [n for m in members for n in m]  # row order of the per-link scalars

  operators = []
  for r, rl in enumerate(rounds):
    src = [sources[j] for _, j in rl]
    taps = [names[k] for k, _ in rl]
    fixed = {n: zeros[n] for n in sources if n not in set(src)}

    def restricted(t_src, fixed=fixed, taps=taps):
      out = jvp_all({**fixed, **t_src})
      return {t: out[t] for t in taps}

    start = {n: zeros[n] for n in src}
    _, jvp_r = jax.linearize(restricted, start)
    operators.append((src, taps, jvp_r, jax.linear_transpose(jvp_r, start)))

  def operator(v):  # per group (n_g, batch, dim_g) -> the same
    out = [[None] * len(m) for m in members]
    n = 0
    for src, taps, jvp_r, vjp_r in operators:
      ids = range(n, n + len(src))
      n += len(src)
      t = {s: v[place[i][0]][place[i][1]].reshape(zeros[s].shape).astype(zeros[s].dtype)
           for s, i in zip(src, ids)}
      back = vjp_r(jvp_r(t))[0]
      for s, i in zip(src, ids):
        out[place[i][0]][place[i][1]] = back[s].reshape(batch, -1).astype(jnp.float32)
    return [jnp.stack(o) for o in out]

  def dots(a, b):  # -> (links, batch), rows in ``order``
    out = jnp.concatenate([jnp.sum(p * q, axis=-1) for p, q in zip(a, b)])
    return out if per_example else jnp.sum(out, 1, keepdims=True) * jnp.ones((1, batch))

  bounds = np.cumsum([0] + [len(m) for m in members])

  def scaled(c, xs):  # per link (batch,) scale times its vectors
    return [p * c[lo:hi, :, None] for p, lo, hi in zip(xs, bounds[:-1], bounds[1:])]

  key = jax.random.key(0)
  v = [jax.random.normal(jax.random.fold_in(key, g), (len(m), batch, d))
       for g, (m, d) in enumerate(zip(members, dims))]
  dim = jnp.asarray([size(links[n][2]) for n in order], jnp.float32)[:, None]
  sigma, ok = _linalg.lanczos(operator, v, steps, tol, dot=dots, scale=scaled, dim=dim,
                              reorthogonalize=False)
  idx = jnp.asarray([links[n][1] for n in order])
  norms = jnp.full((len(names), batch), jnp.nan).at[idx].set(sigma)
  conv = jnp.zeros((len(names), batch), bool).at[idx].set(ok)
  return norms.T, conv.T


def tap_jacobian_norms(model: _probe.ProbedModel, x, steps: int = LANCZOS_STEPS,
                       tol: float = 1e-3, roles: tuple[str, ...] | None = None) -> TapJacobians:
  """Spectral norm of each tap's local Jacobian, per example (see the module
  docstring). Matrix-free: never forms a Jacobian. Two compiled programs (which
  taps feed which, then Lanczos; one more when the examples interact, which
  are then tested one tap at a time); the inputs are used as given (integer
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
  first, interact = _dependencies(model, x, info, with_input, roles, shapes)
  batch = jax.tree.leaves(x)[0].shape[0]
  per_example = not interact and all(s.shape[:1] == (batch,) for s in shapes.values())
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
  vs = jax.vmap(lambda k: jax.random.normal(k, x.shape, jnp.float32).astype(x.dtype))(keys)

  def squares(v):
    out = jax.jvp(f, (x,), (v,))[1].astype(jnp.float32)
    return jnp.sum(out.reshape(out.shape[0], -1) ** 2, axis=-1)
  return _linalg.hutchinson(squares, vs)


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
