"""The seed's training experiments: each a list of runs (label, model, settings)
that differ in one thing."""

from __future__ import annotations

from gradflow_jax.models._config import MLPConfig
from gradflow_jax.studies._train import TrainConfig

EXPERIMENTS = ("residual", "activations", "normalization", "clipping", "dead-relu",
               "edge-of-stability")  # the last: studies/_edge_of_stability.py

# Defaults per experiment, chosen so the effect shows within about a minute on
# a 2-core CPU; every one can be overridden from the command line.
DEFAULTS = {
    "residual": dict(depth=20, width=64, activation="sigmoid", optimizer="adam", lr=1e-3,
                     steps=300),
    "activations": dict(depth=10, width=64, activation=None, optimizer="adam", lr=1e-3,
                        steps=300),
    "normalization": dict(depth=20, width=64, activation="tanh", optimizer="adam", lr=1e-3,
                          steps=300),
    "clipping": dict(depth=10, width=64, activation="relu", optimizer="sgd", lr=0.5,
                     steps=200, clip=1.0),
    # plain SGD at lr 0.5 on digits: within 300 steps about half of the ReLU
    # units die (measured figures and what holds on every machine: the
    # dead-relu section of docs/studies.md)
    "dead-relu": dict(depth=8, width=64, activation="relu", optimizer="sgd", lr=0.5,
                      steps=300),
}


def experiment_runs(name: str, in_dim: int, classes: int, overrides: dict) -> list[tuple]:
  """[(label, MLPConfig, TrainConfig)] for experiment ``name``.

  ``overrides`` holds command-line values (``None`` = keep the default).
  """
  if name not in EXPERIMENTS:
    raise ValueError(f"unknown experiment {name!r}; expected one of: " + ", ".join(EXPERIMENTS))
  o = {**DEFAULTS[name], **{k: v for k, v in overrides.items() if v is not None}}
  base = MLPConfig(in_dim, o["width"], o["depth"], classes, activation=o["activation"] or "relu")
  tc = TrainConfig(optimizer=o["optimizer"], lr=o["lr"], steps=o["steps"],
                   batch_size=o.get("batch_size") or 64, eval_every=o.get("eval_every") or 25,
                   seed=o.get("seed") or 0,
                   clip=o.get("clip") if name not in ("clipping", "dead-relu") else None)
  if name == "residual":
    return [("plain", base, tc), ("residual", base.replace(residual=True), tc)]
  if name == "activations":
    acts = [o["activation"]] if o["activation"] else ["sigmoid", "tanh", "relu", "gelu", "silu"]
    return [(a, base.replace(activation=a), tc) for a in acts]
  if name == "normalization":
    return [(n or "none", base.replace(norm=n), tc) for n in (None, "layernorm", "batchnorm")]
  if name == "clipping":
    clip = o.get("clip") or 1.0
    return [("no clipping", base, tc),
            (f"clip_by_global_norm({clip:g})", base, TrainConfig(**{**tc.__dict__, "clip": clip}))]
  # dead-relu: a learning rate large enough to kill ReLU units. Leaky ReLU's
  # units cannot die, but the same steps are too large for it too (the guard
  # stops it when it diverges); clipping the gradient norm keeps ReLU alive
  clip = o.get("clip") or 1.0
  return [("relu", base, tc), ("leaky_relu", base.replace(activation="leaky_relu"), tc),
          (f"relu, clip_by_global_norm({clip:g})", base,
           TrainConfig(**{**tc.__dict__, "clip": clip}))]
