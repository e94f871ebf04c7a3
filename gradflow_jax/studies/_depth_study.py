"""Depth studies of any model family: how the input-output Jacobian, the
signal at every tap and the backward signal change as the family gets deeper.

For each depth the factory is built once per seed (see ``_family``); one
compiled program, vmapped over the seeds and sharded over every device,
measures per seed:

* the input-output Jacobian J = d target / d source of each example (source:
  the input when it is a float array, else the first tap; target: the last
  ``post`` tap, the input of the read-out layer, else the last tap): its
  spectral norm by Lanczos (matrix-free, jvp/vjp, full reorthogonalisation;
  marked when not converged), and where J has at most ``exact_max`` entries
  also its exact SVD, which gives the exact spectral norm and mean squared
  singular value ||J||_F^2 / min(n_in, n_out); otherwise that mean comes from
  Hutchinson's estimator;
* per tap, the mean squared singular value of d tap / d source (all taps from
  the same ``probes`` jvps: Hutchinson), the activation std and ||dL/d tap||;
* the spectral norms of the 2-D weight matrices (and of 3-D stacks whose
  leading axis is the depth: a scanned layer) and the log10 of their product,
  the Lipschitz bound of a plain chain with 1-Lipschitz activations.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax.measure import _backend, _linalg, _model_stats
from gradflow_jax.studies import _family

DEFAULT_DEPTHS = (2, 4, 8, 16, 32)
EXACT_MAX = 1 << 16  # per-example Jacobians with at most this many entries: also exact SVD
LANCZOS_STEPS = 32
PROBES = 8
FAST_COMPILE_MAX = 256  # seeds x depth up to this: compile at XLA -O0 (runs once; see _family)


@dataclasses.dataclass(frozen=True)
class DepthStudySettings:
  """What a depth study measures. ``width`` is passed to the factory when set."""
  depths: tuple[int, ...] = DEFAULT_DEPTHS
  seeds: int = 4
  width: int | None = None
  examples: int = 4
  steps: int = LANCZOS_STEPS
  tol: float = 1e-4
  probes: int = PROBES
  exact_max: int = EXACT_MAX
  loss: str = "cross_entropy"
  seed: int = 0
  jacobians: bool = True  # False: activation and gradient statistics only (cheaper)

  def __post_init__(self):
    if not self.depths or any(not isinstance(d, int) or d < 1 for d in self.depths):
      raise ValueError(f"expected depths >= 1, got {self.depths!r}")
    if len(set(self.depths)) != len(self.depths):
      raise ValueError(f"expected distinct depths, got {self.depths!r}")
    for label in ("seeds", "examples", "steps", "probes"):
      v = getattr(self, label)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"expected {label} >= 1, got {v!r}")
    if self.width is not None and (not isinstance(self.width, int) or self.width < 1):
      raise ValueError(f"expected width >= 1, got {self.width!r}")


def _target(info) -> str:
  post = [i.name for i in info if i.role == "post"]
  return post[-1] if post else info[-1].name


def _interacting(fam: _family.Family, source: str | None) -> bool:
  """Whether a tangent on example 0 of the source reaches another example's
  target (BatchNorm in training mode): then each example's Jacobian is taken
  with the whole batch present, not alone."""
  if jax.tree.leaves(fam.x)[0].shape[0] < 2:
    return False
  params = jax.tree.map(lambda a: a[0], fam.params)
  target = _target(fam.info)
  g = lambda s: _source_map(fam.model.forward, params, fam.x, source)(s)[target]
  s0 = _source_value(fam.x, source, fam.shapes)
  t = jnp.zeros_like(s0).at[0].set(1.0)
  out = jax.jit(lambda s, t: jax.jvp(g, (s,), (t,))[1])(s0, t)
  return bool(jnp.any(out[1:] != 0))


def _source_value(x, source, shapes):
  return x if source is None else jnp.zeros(shapes[source].shape, shapes[source].dtype)


def _source_map(forward, params, x, source):
  """s (the whole batch's source: the input, or a shift of tap ``source``)
  -> every tap."""
  if source is None:
    return lambda s: forward(params, s, None)[1]
  return lambda s: forward(params, x, {source: s})[1]


_KERNEL_NAMES = ("kernel", "w", "weight", "weights")


def _leaf_name(path) -> str:
  keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  keys = [k for k in keys if k != "value"]  # nnx.Variable's value
  return keys[-1].lower() if keys else ""


def _weight_matrices(params, depth: int):
  """The 2-D weight leaves (named kernel, w or weight), and the layers of 3-D
  ones whose leading axis is ``depth`` (a scanned stack), as matrices."""
  mats = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if _leaf_name(path) not in _KERNEL_NAMES:
      continue
    if leaf.ndim == 2 and min(leaf.shape) > 1:
      mats.append(leaf[None])
    elif leaf.ndim == 3 and leaf.shape[0] == depth and min(leaf.shape[1:]) > 1:
      mats.append(leaf)
  return mats


def _measure_fn(fam: _family.Family, depth: int, source, target, interacting, s: DepthStudySettings,
                loss):
  """The per-seed measurement (unjitted): the model is linearized once at the
  batch; every Jacobian product below is that linear map (or its transpose)."""
  forward, info, shapes = fam.model.forward, fam.info, fam.shapes
  names = [i.name for i in info]
  n_ex = jax.tree.leaves(fam.x)[0].shape[0]
  like = _source_value(fam.x, source, shapes)
  n_in = int(np.prod(like.shape[1:]))
  n_out = int(np.prod(shapes[target].shape[1:]))
  exact = n_in * n_out <= s.exact_max
  gram = _jacobians_gram()
  work = jnp.promote_types(like.dtype, jnp.float32)
  sizes = np.asarray([min(n_in, int(np.prod(shapes[n].shape[1:]))) for n in names], np.float32)
  rows = lambda a: a.reshape(a.shape[0], -1).astype(work)
  unrows = lambda r: r.reshape(like.shape).astype(like.dtype)
  keep = lambda i: (jnp.arange(n_ex) == i).astype(work)[:, None]  # example i only

  def measure(params, x, y):
    stats, tap_norms, _, gnorm, value, _ = _model_stats.flow_body(
        forward, params, x, y, loss, info, shapes)
    flow = {"tap_std": stats.std, "tap_grad_norm": tap_norms, "global_norm": gnorm,
            "loss": value}
    if not s.jacobians:
      return flow
    key = jax.random.key(s.seed + 17)
    s_all = _source_value(x, source, shapes)
    _, lin = jax.linearize(_source_map(forward, params, x, source), s_all)
    lin_t = lambda v: rows(lin(unrows(v))[target])
    lin_t_T = jax.linear_transpose(lin_t, jnp.zeros((n_ex, n_in), work))

    if not interacting:  # J is block diagonal: every example's block at once
      operator = lambda v: lin_t_T(lin_t(v))[0]
      columns = lambda e: lin_t(jnp.broadcast_to(e, (n_ex, n_in)))  # (B, n_out)
    else:  # example i's own block, the batch held fixed around it
      operator = lambda v: jax.vmap(
          lambda i: lin_t_T(lin_t(v * keep(i)) * keep(i))[0][i])(jnp.arange(n_ex))
      columns = lambda e: jax.vmap(lambda i: lin_t(e[None] * keep(i))[i])(jnp.arange(n_ex))
    v0 = jax.random.normal(key, (n_ex, n_in), work)
    top, conv = _linalg.lanczos_rows(operator, v0, s.steps, s.tol)

    probes = jax.random.normal(jax.random.fold_in(key, 1), (s.probes,) + like.shape, work)

    def one(v):
      out = lin(v.astype(like.dtype))
      return jnp.stack([jnp.mean(jnp.sum(rows(out[n]) ** 2, -1)) for n in names]), jnp.sum(
          rows(out[target]) ** 2, -1)
    fro_taps, fro_target = _linalg.hutchinson(one, probes)
    tap_msq = fro_taps / sizes
    if exact:
      eye = _after(jnp.eye(n_in, dtype=work), top)
      jac = jnp.transpose(jax.vmap(columns)(eye), (1, 2, 0))  # (B, n_out, n_in)
      sv = _linalg.singular_values(jac, gram)
      top_exact, msq = sv[:, 0], jnp.sum(sv**2, -1) / min(n_in, n_out)
    else:
      top_exact = jnp.full((n_ex,), jnp.nan, work)
      msq = fro_target / min(n_in, n_out)

    mats = _weight_matrices(params, depth)
    if mats:
      tops, last = [], (top, top_exact)
      for m in mats:  # one LAPACK call after another (see _after)
        last = _linalg.singular_values(_after(m.astype(jnp.float32), last), gram)[:, 0]
        tops.append(last)
      wnorms = jnp.concatenate(tops)
      log_prod = jnp.sum(jnp.log10(wnorms))
    else:
      wnorms, log_prod = jnp.zeros((0,), jnp.float32), jnp.full((), jnp.nan, jnp.float32)
    return {**flow, "spectral_norm": top, "converged": conv, "spectral_norm_exact": top_exact,
            "mean_sq_singular_value": msq, "tap_mean_sq_singular_value": tap_msq,
            "weight_spectral_norms": wnorms, "log10_weight_norm_product": log_prod}
  return measure, exact, n_in, n_out


def _after(x, deps):
  """``x`` computed only once ``deps`` are: ``_backend.lapack_after``."""
  return _backend.lapack_after(x, deps)


def _jacobians_gram() -> bool:
  from gradflow_jax.studies import _sweep
  return _sweep._use_gram()


def _summary(values: np.ndarray) -> dict:
  """Median and 10/90% quantiles over every seed and example (finite values)."""
  flat = np.asarray(values, np.float64).reshape(-1)
  finite = flat[np.isfinite(flat)]
  if not finite.size:
    return {"median": None, "q10": None, "q90": None, "n": 0}
  q10, med, q90 = np.quantile(finite, [0.1, 0.5, 0.9])
  return {"median": float(med), "q10": float(q10), "q90": float(q90), "n": int(finite.size)}


def depth_study(make: Callable, settings: DepthStudySettings | None = None, *, output=None,
                activations: dict[str, str] | None = None,
                theory: Callable[[int], float] | None = None,
                on_depth: Callable[[int], None] | None = None) -> dict:
  """Measures the family ``make`` at each depth of ``settings.depths``.

  Args:
    make: ``make(depth=, width=, key=) -> (model, params, (x, y))``; ``key``
      (or ``seed=``) draws the seed's network. A linen factory without one is
      re-initialised per seed from its module. The batch is seed 0's.
    settings: :class:`DepthStudySettings`.
    output: which model output the loss uses (tuple/dict outputs).
    activations: {tap: activation} for saturation/dead tests (not needed here).
    theory: ``theory(depth) -> predicted mean squared singular value`` of
      the input-output Jacobian, drawn beside the measurement; defaults to
      ``make.gradflow_theory`` when the factory carries one.

  Returns:
    ``{"settings", "devices", "target", "source", "exact", "depths": [...],
    "theory": ...}``: per depth the tap names and per-seed arrays (see the
    results.json schema in docs/results-schema.md), with medians and 10-90% quantiles.

  Raises:
    ValueError: a factory that does not take ``depth=``, cannot draw seeds,
      or ignores ``depth`` (the number of taps does not change).
  """
  s = settings or DepthStudySettings()
  theory = theory if theory is not None else getattr(make, "gradflow_theory", None)
  size = {} if s.width is None else {"width": s.width}
  _family.check_factory(make, ("depth",) + tuple(size))
  loss = _model_stats.loss_fn(s.loss)
  out, first_taps = [], {}
  interacting = None
  for depth in sorted(s.depths):
    fam = _family.build(make, s.seeds, s.examples, s.seed, output, depth=depth, **size)
    if activations:
      fam = fam._replace(model=fam.model.with_activations(activations))
    _check_depth_used(first_taps, depth, len(fam.info))
    source = None if _family.is_float_array(fam.x) else fam.info[0].name
    target = _target(fam.info)
    if interacting is None:
      interacting = _interacting(fam, source)
    measure, exact, n_in, n_out = _measure_fn(fam, depth, source, target, interacting, s, loss)
    raw = _family.run_sharded(measure, _family.pad_params(fam.params, s.seeds), fam.x, fam.y,
                              fast_compile=s.seeds * depth <= FAST_COMPILE_MAX)
    raw = {k: np.asarray(v)[:s.seeds] for k, v in raw.items()}
    out.append(_depth_record(depth, fam, source, target, exact, n_in, n_out, raw, theory))
    if on_depth is not None:
      on_depth(depth)
  x0 = jax.tree.leaves(fam.x)[0] if out else None
  nonfinite = (int(np.sum(~np.isfinite(np.asarray(x0)))) if x0 is not None
               and _family.is_float_array(x0) else 0)
  return {"settings": dataclasses.asdict(s), "devices": len(jax.devices()),
          "input_nonfinite": nonfinite,
          "processes": jax.process_count(), "examples_interact": bool(interacting),
          "has_theory": theory is not None, "depths": out}


def _check_depth_used(seen: dict, depth: int, n_taps: int) -> None:
  for d, n in seen.items():
    if n == n_taps:
      raise ValueError(f"expected the number of taps to change with depth (does the factory "
                       f"ignore depth=?), got {n_taps} taps at depths {d} and {depth}")
  seen[depth] = n_taps


def _depth_record(depth, fam, source, target, exact, n_in, n_out, raw, theory) -> dict:
  seeds, n_ex = raw["loss"].shape[0], jax.tree.leaves(fam.x)[0].shape[0]
  nan = lambda *shape: np.full(shape, np.nan, np.float32)
  top = raw.get("spectral_norm", nan(seeds, n_ex))
  exact_top = raw.get("spectral_norm_exact", nan(seeds, n_ex))
  conv = raw.get("converged", np.zeros((seeds, n_ex), bool)).astype(bool)
  msq = raw.get("mean_sq_singular_value", nan(seeds, n_ex))
  with np.errstate(invalid="ignore", divide="ignore"):
    rel = np.abs(top - exact_top) / exact_top
    grad = raw["tap_grad_norm"]
    ratio = grad[:, 0] / grad[:, -1]
  x0 = jax.tree.leaves(fam.x)[0]
  if _family.is_float_array(x0):  # an example with a NaN/Inf input has no Jacobian to report
    bad = ~np.isfinite(np.asarray(x0)).reshape(n_ex, -1).all(1)
    top, exact_top, msq = (np.where(bad[None], np.nan, a) for a in (top, exact_top, msq))
  measured = np.where(conv, top, np.nan)  # an unconverged value is not a measurement
  predicted = None
  if theory is not None:
    try:
      predicted = float(theory(depth))
    except (ValueError, ArithmeticError, OverflowError):
      predicted = float("nan")
  jacobians = "spectral_norm" in raw
  return {
      "depth": depth, "taps": list(fam.names), "roles": [i.role for i in fam.info],
      "source": source or "<input>", "target": target, "n_in": n_in, "n_out": n_out,
      "exact": bool(exact and jacobians),
      "spectral_norm": measured, "converged": conv, "spectral_norm_exact": exact_top,
      "lanczos_vs_exact_max_rel_diff": (float(np.nanmax(rel)) if exact and np.isfinite(rel).any()
                                        else None),
      "mean_sq_singular_value": msq,
      "tap_mean_sq_singular_value": raw.get("tap_mean_sq_singular_value",
                                            nan(seeds, len(fam.names))),
      "tap_std": raw["tap_std"], "tap_grad_norm": grad, "first_over_last_grad_norm": ratio,
      "global_norm": raw["global_norm"], "loss": raw["loss"],
      "weight_spectral_norms": raw.get("weight_spectral_norms", nan(seeds, 0)),
      "log10_weight_norm_product": raw.get("log10_weight_norm_product", nan(seeds)),
      "summary": {"spectral_norm": _summary(measured),
                  "mean_sq_singular_value": _summary(msq),
                  "first_over_last_grad_norm": _summary(ratio),
                  "unconverged": int((~conv).sum()) if jacobians else 0},
      "theory_mean_sq_singular_value": predicted,
  }


# --- growth laws to draw beside a measurement -------------------------------------------

def mean_field_law(activation: str, sigma_w: float, sigma_b: float = 0.0,
                   q0: float | None = None) -> Callable[[int], float]:
  """``depth -> `` the mean-field mean squared singular value of an MLP's
  input-to-depth Jacobian (``theory.mean_sq_singular_value_by_depth``)."""
  from gradflow_jax import theory

  def law(depth: int) -> float:
    return float(theory.mean_sq_singular_value_by_depth(activation, sigma_w, sigma_b, depth,
                                                        q0=q0)[-1])
  return law


def residual_law(branch_gain: float, scaled: bool) -> Callable[[int], float]:
  """``depth -> `` E||J||_F^2 / n of L residual blocks x + a f(x) whose
  branch Jacobian has mean squared singular value ``branch_gain`` and is
  independent of the stream (a ReLU branch of He-initialised layers at
  init): (1 + a^2 g)^L, with a = 1/sqrt(L) when ``scaled`` (bounded by e^g)
  and a = 1 otherwise (exponential)."""
  def law(depth: int) -> float:
    a2 = 1.0 / depth if scaled else 1.0
    return float((1.0 + a2 * branch_gain) ** depth)
  return law
