"""The default analysis: every activation at initialization, with its
recommended initializer and with one shared initializer (the seed's
comparison of activation statistics, plus gradients)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from gradflow_jax.measure import _rows, _stats
from gradflow_jax.models import _initializers, _losses, _mlp
from gradflow_jax.studies import _analyze
from gradflow_jax.models._config import MLPConfig

DEFAULT_ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu")


# the time estimate's constants, measured on XLA:CPU (2 cores) by timing
# run_compare at depths 40-640 and widths 8-1024 (2026-12-07; within 2x):
# per run a fixed cost, per hidden layer of the unrolled network its compile
# time, and the arithmetic rate
FIXED_SECONDS = 2.5
COMPILE_SECONDS_PER_LAYER = 0.04
FLOPS_PER_SECOND = 2e10


@dataclasses.dataclass(frozen=True)
class CompareSettings:
  """What the comparison runs: sizes, activations and the shared initializer."""
  in_dim: int = 128
  width: int = 256
  depth: int = 10
  out_dim: int = 10
  batch: int = 64
  activations: tuple[str, ...] = DEFAULT_ACTIVATIONS
  shared_init: str | None = "torch_default"
  norm: str | None = None
  residual: bool = False
  loss: str = "cross_entropy"
  sigma_b: float = 0.0
  seed: int = 0

  def __post_init__(self):
    if self.batch < 2:
      raise ValueError(f"expected a batch size >= 2 (a sample std needs two values), got {self.batch}")
    if not self.activations:
      raise ValueError("expected at least one activation, got none")
    _losses.check_loss_name(self.loss)
    if self.shared_init is not None:
      _initializers.canonical_init(self.shared_init)

  def parameter_count(self) -> int:
    """Parameters of one run's MLP (a residual block holds two layers)."""
    hidden = (self.width * self.width + self.width) * max(self.depth - 1, 0)
    return ((self.in_dim + 1) * self.width + hidden * (2 if self.residual else 1)
            + (self.width + 1) * self.out_dim)

  def estimated_bytes(self) -> int:
    """Peak memory of one run, about (runs go one after another): parameters,
    gradients and a copy (3x), the activations, pre-activations and their
    gradients with the statistics' temporaries (6 per layer and example),
    the inputs twice and, for the diagnosis (width <= 512), the input-output
    Jacobian of 4 examples by forward mode (in_dim tangents per layer)."""
    layers = self.depth * self.width
    jacobian = 4 * self.in_dim * layers if self.width <= 512 else 0
    return 4 * (3 * self.parameter_count() + 6 * self.batch * layers
                + 2 * self.batch * self.in_dim + jacobian)

  def estimated_seconds(self) -> float:
    """Wall time of every run, roughly: compiling the unrolled network
    (``COMPILE_SECONDS_PER_LAYER`` per hidden layer, measured on XLA:CPU)
    and the arithmetic of the forward/backward passes and the diagnosis at
    ``FLOPS_PER_SECOND``."""
    runs = len(self.configs())
    flops = 2 * 3 * self.batch * self.parameter_count() + 2 * 4 * self.in_dim * (
        self.parameter_count() if self.width <= 512 else 0)
    return runs * (FIXED_SECONDS + COMPILE_SECONDS_PER_LAYER * self.depth
                   + flops / FLOPS_PER_SECOND)

  def configs(self) -> list[tuple[str, MLPConfig]]:
    """(role, config) for every run: recommended init, then the shared one."""
    out = []
    for name in self.activations:
      base = MLPConfig(self.in_dim, self.width, self.depth, self.out_dim, activation=name,
                       init="auto", sigma_b=self.sigma_b, norm=self.norm, residual=self.residual)
      out.append(("recommended", base))
      if self.shared_init is not None:
        out.append(("shared", base.replace(init=self.shared_init)))
    return out


def make_batch(settings: CompareSettings, x: np.ndarray | None = None):
  """Gaussian inputs (or the given ones) and random targets for the loss."""
  kx, ky = jax.random.split(jax.random.key(settings.seed + 1))
  if x is None:
    x = jax.random.normal(kx, (settings.batch, settings.in_dim))
  n = np.shape(x)[0]
  if settings.loss == "cross_entropy":
    y = jax.random.randint(ky, (n,), 0, settings.out_dim)
  else:
    y = jax.random.normal(ky, (n, settings.out_dim))
  return np.asarray(x), np.asarray(y)


def _label(act: str, cfg: MLPConfig, role: str, from_file: bool) -> str:
  if from_file:
    return f"{act} · weights file"
  spec = cfg.init_spec
  return f"{act} · {spec.name} · gain {spec.gain:.3g}{'' if role == 'recommended' else ' (shared)'}"



def _first_layer(nonfinite) -> int | None:
  """The first layer with a non-finite count, or None."""
  first = int(_rows.first_flagged(np.asarray(nonfinite) > 0))
  return None if first < 0 else first

def run_compare(settings: CompareSettings, x: np.ndarray | None = None,
                params_from: Callable[[MLPConfig], dict] | None = None,
                on_run: Callable[[str], None] | None = None) -> dict:
  """Runs every configuration once and returns host results.

  Args:
    settings: the comparison.
    x: inputs (batch, in_dim); Gaussian when ``None``.
    params_from: ``cfg -> params`` to analyse given weights instead of drawing
      them (then only one run per activation is made).
    on_run: called with each run's label before it starts (progress).

  Returns:
    ``{"settings": ..., "runs": [{"label", "activation", "init", "gain", "role",
    "activation_stats", "gradient_stats", "first_nonfinite_layer",
    "findings"}]}`` with NumPy arrays.
  """
  x, y = make_batch(settings, x)
  runs = []
  configs = settings.configs()
  if params_from is not None:
    configs = [(r, c) for r, c in configs if r == "recommended"]
  for role, cfg in configs:
    label = _label(cfg.activation, cfg, role, params_from is not None)
    if on_run is not None:
      on_run(label)
    key = jax.random.key(settings.seed)
    params = params_from(cfg) if params_from is not None else _mlp.init_mlp(key, cfg)
    stats = jax.device_get(_stats.flow_stats(cfg, params, x, y, settings.loss))
    acts, grads = stats.activations._asdict(), stats.gradients._asdict()
    spec = cfg.init_spec
    runs.append({
        "label": label, "activation": cfg.activation,
        "role": "weights file" if params_from is not None else role,
        "init": "weights file" if params_from else spec.name,
        "gain": None if params_from else spec.gain,
        "activation_stats": acts, "gradient_stats": grads,
        "first_nonfinite_layer": _first_layer(acts["nonfinite"]),
        "findings": _analyze.diagnose(cfg, params, x, y, settings.loss, stats=stats),
    })
  return {"settings": dataclasses.asdict(settings), "runs": runs,
          "input_nonfinite": int((~np.isfinite(x)).sum())}
