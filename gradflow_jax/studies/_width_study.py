"""Width studies (the muP coordinate check; Yang et al. 2021, "Tuning Large
Neural Networks via Zero-Shot Hyperparameter Transfer", figure 5): for each
width, the typical size of every tap's coordinates at init and how far they
move in the first optimizer steps. In the standard parametrisation with Adam
the read-out's change grows with width; in muP every curve is flat.

Per width the family is built once per seed (``_family``) and one compiled
program, vmapped over seeds and sharded over devices, takes ``steps``
optimizer steps on the factory's batch, measuring per tap
rms(tap_0) = sqrt(mean(tap^2)) at init and rms(tap_t - tap_0) after step t.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradflow_jax.measure import _model_stats
from gradflow_jax.studies import _family

DEFAULT_WIDTHS = (64, 128, 256, 512, 1024)
OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class WidthStudySettings:
  """``depth`` is passed to the factory when set."""
  widths: tuple[int, ...] = DEFAULT_WIDTHS
  seeds: int = 2
  depth: int | None = None
  steps: int = 3
  optimizer: str = "adam"
  lr: float = 1e-2
  examples: int | None = None
  loss: str = "cross_entropy"
  seed: int = 0

  def __post_init__(self):
    if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
      raise ValueError(f"expected widths >= 1, got {self.widths!r}")
    if len(set(self.widths)) != len(self.widths):
      raise ValueError(f"expected distinct widths, got {self.widths!r}")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"expected optimizer in {OPTIMIZERS}, got {self.optimizer!r}")
    for label in ("seeds", "steps"):
      v = getattr(self, label)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"expected {label} >= 1, got {v!r}")
    if not 0 < self.lr < float("inf"):
      raise ValueError(f"expected lr > 0, got {self.lr}")


def _rms(a):
  a = a.astype(jnp.float32)
  return jnp.sqrt(jnp.mean(a * a))


def _study_fn(fam: _family.Family, s: WidthStudySettings, loss):
  forward, names = fam.model.forward, fam.names
  tx = optax.adam(s.lr) if s.optimizer == "adam" else optax.sgd(s.lr)

  def one(params, x, y):
    taps0 = forward(params, x, None)[1]
    objective = lambda p: loss(forward(p, x, None)[0], y)

    def step(carry, _):
      p, opt = carry
      g = jax.grad(objective)(p)
      updates, opt = tx.update(g, opt, p)
      p = optax.apply_updates(p, updates)
      taps = forward(p, x, None)[1]
      return (p, opt), jnp.stack([_rms(taps[n] - taps0[n]) for n in names])
    (_, _), moved = jax.lax.scan(step, (params, tx.init(params)), None, length=s.steps)
    return {"rms_init": jnp.stack([_rms(taps0[n]) for n in names]), "rms_change": moved}
  return one


def width_study(make: Callable, settings: WidthStudySettings | None = None, *, output=None,
                on_width: Callable[[int], None] | None = None) -> dict:
  """Measures the family ``make(width=, depth=, key=)`` at each width.

  Returns ``{"settings", "devices", "taps", "widths": [{"width", "rms_init":
  (seeds, taps), "rms_change": (seeds, steps, taps)}, ...]}``. Raises
  ValueError for a factory that does not take ``width=``, ignores it (tap
  shapes unchanged) or changes the taps' names with width.
  """
  s = settings or WidthStudySettings()
  size = {} if s.depth is None else {"depth": s.depth}
  _family.check_factory(make, ("width",) + tuple(size))
  loss = _model_stats.loss_fn(s.loss)
  records, names, shapes_seen = [], None, {}
  for width in sorted(s.widths):
    fam = _family.build(make, s.seeds, s.examples, s.seed, output, width=width, **size)
    if names is None:
      names = fam.names
    elif fam.names != names:
      raise ValueError(f"expected the same taps at every width, got {len(fam.names)} taps at "
                       f"width {width} and {len(names)} before")
    shapes = tuple(tuple(v.shape) for v in fam.shapes.values())
    for w, seen in shapes_seen.items():
      if seen == shapes:
        raise ValueError(f"expected tap shapes to change with width (does the factory ignore "
                         f"width=?), got the same at widths {w} and {width}")
    shapes_seen[width] = shapes
    raw = _family.run_sharded(_study_fn(fam, s, loss), _family.pad_params(fam.params, s.seeds),
                              fam.x, fam.y, fast_compile=True)
    records.append({"width": width, **{k: np.asarray(v)[:s.seeds] for k, v in raw.items()}})
    if on_width is not None:
      on_width(width)
  return {"settings": dataclasses.asdict(s), "devices": len(jax.devices()), "taps": list(names),
          "widths": records, "slopes": _slopes(records)}


def _slopes(records) -> dict:
  """Per tap, the log-log slope of the seed-mean rms against width, at init
  and after the last step: about 0 for a width-stable coordinate, about 1
  for one growing like width."""
  widths = np.log([r["width"] for r in records])
  if len(widths) < 2:
    return {"init": None, "last_step": None}

  def slope(values):  # (widths, taps)
    with np.errstate(divide="ignore", invalid="ignore"):
      logs = np.log(values)
    return [float(np.polyfit(widths, logs[:, i], 1)[0]) if np.isfinite(logs[:, i]).all()
            else None for i in range(values.shape[1])]
  init = np.stack([r["rms_init"].mean(0) for r in records])
  last = np.stack([r["rms_change"][:, -1].mean(0) for r in records])
  return {"init": slope(init), "last_step": slope(last)}
