"""The curvature of a model's loss at its parameters, on one batch: the top
of the Hessian's spectrum, its whole eigenvalue density (SLQ), its trace and
the sharpness of every parameter leaf's diagonal block, from one compiled
program (what ``analyze.py curvature`` writes).

References:
  Ghorbani, Krishnan, Xiao (2019), An investigation into neural net
  optimization via Hessian eigenvalue density, arXiv:1901.10159.
  Cohen, Kaur, Li, Kolter, Talwalkar (2021), Gradient descent on neural
  networks typically occurs at the edge of stability, arXiv:2103.00065.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax.capture import _probed as _probe
from gradflow_jax.measure import _hessian, _model_stats, _spectrum, _stability
from gradflow_jax.watch._metrics import leaf_names

# The density's Gaussian broadening is (range of the Ritz values) /
# (SHARPNESS * steps): m Lanczos steps resolve about m features of the
# spectrum (``spectral_density``), so each keeps about a quarter of the space
# between them; the grid spans the range padded by PAD of it (at least 6 sigma:
# the tails beyond hold under 1e-8 of the mass) with GRID_PER_SIGMA points per
# sigma.
SHARPNESS = 4
PAD = 0.05
GRID_PER_SIGMA = 6
MIN_GRID = 1001
ADAM_B1 = 0.9  # the b1 of the Adam threshold reported beside 2/lr

# The cost model, measured on 2 CPU cores (jax 0.10, beside another process's
# test run): a fixed cost (compiling and the host's work) and the arithmetic at
# FLOPS_PER_SECOND, a Hessian-vector product costing HVP_PASSES forward passes
# (XLA's flop count of the loss). Inside the Lanczos loops the dense MLP of
# examples/nnx_mlp.py ran at about 1e10 flop/s and the CNN of
# examples/linen_cnn.py (convolutions, vmapped over probes and leaves) at about
# 1e9; at the rate between, both are estimated at 40 s by default: the MLP
# took 31-36 s, the CNN 114-147 s (3-3.7x the estimate).
FIXED_SECONDS = 15.0
HVP_PASSES = 4
FLOPS_PER_SECOND = 3e9


class CurvatureSettings(NamedTuple):
  """What :func:`curvature_study` measures.

  Attributes:
    examples: the batch's examples the loss is averaged over (the first of
      the data given; fewer when it has fewer).
    probes: Rademacher probes of the SLQ density and Hutchinson trace (their
      errors fall as 1/sqrt(probes)).
    lanczos_steps: Lanczos steps per probe and per block (Hessian-vector
      products; capped at the number of parameters, a block's at its size).
    top: how many of the largest eigenvalues to report (<= lanczos_steps).
    seed: the probes' and block start vectors' random key.
    lr: a learning rate whose stability thresholds are reported beside the
      eigenvalues (2 / lr for gradient descent, 38 / lr for Adam's
      preconditioned sharpness), or None.
    tol: relative tolerance of the convergence flags.
    probes_at_once: probes run together (each holds ``lanczos_steps``
      parameter-sized vectors); None: all.
  """
  examples: int = 256
  probes: int = 8
  lanczos_steps: int = 32
  top: int = 5
  seed: int = 0
  lr: float | None = None
  tol: float = 1e-3
  probes_at_once: int | None = None

  def check(self, parameters: int | None = None) -> None:
    """Raises ValueError for settings no run can take (before tracing)."""
    for name in ("examples", "probes", "lanczos_steps", "top"):
      value = getattr(self, name)
      if not (isinstance(value, (int, np.integer)) and value >= 1):
        raise ValueError(f"expected {name} a positive int, got {value!r}")
    if self.top > self.lanczos_steps:
      raise ValueError(f"expected top <= lanczos_steps (each probe's Krylov space holds "
                       f"lanczos_steps directions), got top={self.top} and "
                       f"lanczos_steps={self.lanczos_steps}")
    if parameters is not None and self.top > parameters:
      raise ValueError(f"expected top <= the number of parameters ({parameters}), got "
                       f"top={self.top}")
    if self.lr is not None and not (isinstance(self.lr, (int, float)) and 0 < self.lr < np.inf):
      raise ValueError(f"expected lr a finite number > 0 or None, got {self.lr!r}")


def density_grid(nodes: jax.Array, weights: jax.Array, steps: int):
  """(grid, sigma) of the density drawn from SLQ ``nodes``/``weights``
  (jit-able): sigma = (range of the nodes of positive weight) / (SHARPNESS *
  steps), the grid over that range padded by max(PAD * range, 6 sigma), with
  GRID_PER_SIGMA points per sigma (at least MIN_GRID). A range of 0 (every
  node equal) is taken as 1e-3 of their magnitude, or 1 if they are 0."""
  kept = jnp.where(weights > 0, nodes, jnp.nan)
  lo, hi = jnp.nanmin(kept), jnp.nanmax(kept)
  scale = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
  span = jnp.where(hi > lo, hi - lo, jnp.where(scale > 0, 1e-3 * scale, 1.0))
  sigma = span / (SHARPNESS * steps)
  pad = jnp.maximum(PAD * span, 6 * sigma)
  points = grid_points(steps)
  return jnp.linspace(0.0, 1.0, points, dtype=nodes.dtype) * (span + 2 * pad) + (lo - pad), sigma


def grid_points(steps: int) -> int:
  """The density grid's length for ``steps`` Lanczos steps (see :func:`density_grid`)."""
  return max(MIN_GRID, int(GRID_PER_SIGMA * SHARPNESS * steps * (1 + 2 * PAD)) + 1)


def probed_loss(forward: Callable, loss: Callable) -> Callable:
  """``loss_fn(params, (x, y))`` of a probed model's ``forward`` (no
  perturbation) and ``loss(output, y)``: what the Hessian is of."""
  return lambda params, batch: loss(forward(params, batch[0], None)[0], batch[1])


@functools.partial(jax.jit, static_argnums=(0, 1, 5, 6, 7, 8, 9))
def _measure(forward, loss, params, batch, key, probes, steps, k, tol, probes_at_once):
  """The loss, :class:`HessianSpectrum`, :class:`BlockSharpness` (without its
  vectors), the density grid, values and sigma: one program."""
  loss_fn = probed_loss(forward, loss)
  spectrum_key, block_key = jax.random.split(key)
  spectrum = _spectrum.hessian_spectrum(loss_fn, params, batch, spectrum_key, num_probes=probes,
                                        steps=steps, k=k, tol=tol,
                                        probes_at_once=probes_at_once)
  blocks = _hessian.block_sharpness(loss_fn, params, batch, steps=steps, tol=tol, key=block_key)
  grid, sigma = density_grid(spectrum.nodes, spectrum.weights, min(steps, _size(params)))
  values = jax.lax.map(lambda g: _spectrum.spectral_density(spectrum, g, sigma), grid,
                       batch_size=256)
  return loss_fn(params, batch), spectrum, blocks._replace(vector=None), grid, values, sigma


def _size(params) -> int:
  return sum(int(np.size(a)) for a in jax.tree.leaves(params))


def curvature_study(model: _probe.ProbedModel, x, y, loss: str | Callable = "cross_entropy",
                    settings: CurvatureSettings = CurvatureSettings()) -> dict:
  """The Hessian of ``loss(model.forward(params, x[:examples])[0],
  y[:examples])`` with respect to ``model.params``, measured matrix-free.

  Args:
    model: a :class:`ProbedModel` (``gf.from_linen``, ``gf.from_nnx``, ...);
      its parameters must be floating, of one dtype.
    x, y: the data; the first ``settings.examples`` examples are used.
    loss: ``"cross_entropy"``, ``"mse"`` or ``loss(output, y) -> scalar``.
    settings: :class:`CurvatureSettings`.

  Returns:
    The results.json layout (host values): ``settings``; ``parameters`` n;
    ``loss`` at these parameters; ``top_eigenvalues`` (descending, in loss
    units per squared parameter unit: the sharpness first) with parallel
    ``top_error`` (bounds) and ``converged`` flags (an unconverged value is
    a lower bound on that eigenvalue, not a measurement of it; NaN where the
    Krylov spaces held fewer directions); ``trace`` (Hutchinson, the sum of
    all n eigenvalues) and ``trace_stderr``; ``density``: ``grid``,
    ``values`` (a probability density of the eigenvalues: it integrates to
    1; times n, eigenvalues per unit) and its Gaussian broadening ``sigma``;
    ``slq``: every probe's ``nodes`` and ``weights``; ``blocks``: per
    parameter leaf (``"Dense_0/kernel"``), the top eigenvalue of its
    diagonal block (``sharpness``), ``error``, ``converged`` and ``size``;
    and with ``settings.lr``, ``thresholds``: ``gd`` = 2 / lr (gradient
    descent is unstable on a quadratic whose top eigenvalue exceeds it) and
    ``adam`` = 38 / lr (b1 = 0.9; it bounds Adam's *preconditioned*
    sharpness, not the eigenvalues here).

  Raises:
    ValueError: bad settings, or parameters not floating of one dtype.
  """
  params, loss = model.params, _model_stats.loss_fn(loss)
  n = _hessian._check(params)
  settings.check(n)
  count = min(settings.examples, len(jax.tree.leaves(x)[0]))
  take = lambda tree: jax.tree.map(lambda a: jnp.asarray(a[:count]), tree)
  batch = (take(x), take(y))
  loss_value, spectrum, blocks, grid, values, sigma = jax.device_get(_measure(
      model.forward, loss, params, batch, jax.random.key(settings.seed), settings.probes,
      settings.lanczos_steps, settings.top, float(settings.tol), settings.probes_at_once))
  names = leaf_names(params)
  sizes = [int(np.size(a)) for a in jax.tree.leaves(params)]
  result = {
      "settings": {**settings._asdict(), "examples": count},
      "parameters": n, "loss": loss_value,
      "top_eigenvalues": spectrum.top, "top_error": spectrum.top_error,
      "converged": spectrum.converged,
      "trace": spectrum.trace, "trace_stderr": spectrum.trace_stderr,
      "density": {"grid": grid, "values": values, "sigma": sigma},
      "slq": {"nodes": spectrum.nodes, "weights": spectrum.weights},
      "blocks": {name: {"sharpness": blocks.eigenvalues[i], "error": blocks.error[i],
                        "converged": blocks.converged[i], "size": sizes[i]}
                 for i, name in enumerate(names)}}
  if settings.lr is not None:
    with jax.enable_x64(True):  # 38 / lr, not 37.99998 / lr
      result["thresholds"] = {
          "lr": settings.lr, "gd": float(_stability.stability_threshold(settings.lr)),
          "adam": float(_stability.adam_stability_threshold(settings.lr, ADAM_B1)),
          "adam_b1": ADAM_B1}
  return result


def estimated_cost(model: _probe.ProbedModel, x, y, loss: str | Callable,
                   settings: CurvatureSettings) -> tuple[int, float]:
  """(peak bytes, seconds) of :func:`curvature_study` on the first
  ``settings.examples`` of ``x, y``, roughly, from the model traced (its tapped
  values) and its loss lowered (XLA's count of its flops), nothing run.
  Memory: the Lanczos bases (``lanczos_steps`` parameter-sized vectors per
  probe run at once, and one for the blocks), the linearized gradient's
  residuals (about 3 copies of the batch's tapped values) and the
  Hessian-vector products in flight (one per probe at once and one per leaf,
  each a parameter-sized vector and the batch's tapped values). Time:
  FIXED_SECONDS, then (probes + leaves) * steps Hessian-vector products of
  HVP_PASSES forward passes each, and the Lanczos reorthogonalization.

  Raises:
    ValueError: as :func:`curvature_study`.
  """
  parameters, loss = _hessian._check(model.params), _model_stats.loss_fn(loss)
  settings.check(parameters)
  leaves = len(jax.tree.leaves(model.params))
  count = min(settings.examples, len(jax.tree.leaves(x)[0]))
  take = lambda tree: jax.tree.map(lambda a: jnp.asarray(a[:count]), tree)
  batch = (take(x), take(y))
  shapes = _probe.discover_taps(model, batch[0]).shapes
  tapped = sum(int(np.prod(s.shape)) for s in shapes.values())
  steps = min(settings.lanczos_steps, parameters)
  at_once = min(settings.probes_at_once or settings.probes, settings.probes)
  need = 4 * (steps * parameters * (at_once + 1) + tapped * (3 + at_once + leaves)
              + parameters * (at_once + leaves + 4))
  cost = jax.jit(probed_loss(model.forward, loss)).lower(model.params, batch).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  forward = float((cost or {}).get("flops", 0)) or 2.0 * parameters * count + 10.0 * tapped
  flops = ((settings.probes + leaves) * steps * HVP_PASSES * forward
           + (settings.probes + 1) * 4 * steps**2 * parameters)
  return int(need), FIXED_SECONDS + flops / FLOPS_PER_SECOND
