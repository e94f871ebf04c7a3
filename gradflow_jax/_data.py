"""Data for training runs: scikit-learn's bundled digits (no download), a
synthetic teacher task, or the user's own .npz of arrays."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np


class Dataset(NamedTuple):
  """Standardized train/test arrays; labels are integers in [0, classes)."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  classes: int
  name: str


def _split(x, y, test_fraction, seed, classes, name) -> Dataset:
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(x))
  n_test = max(1, int(round(test_fraction * len(x))))
  test, train = order[:n_test], order[n_test:]
  mean, std = x[train].mean(0), x[train].std(0)
  std = np.where(std > 0, std, 1.0)  # constant pixels stay 0 after centring
  norm = lambda a: ((a - mean) / std).astype(np.float32)
  return Dataset(norm(x[train]), y[train].astype(np.int32), norm(x[test]),
                 y[test].astype(np.int32), classes, name)


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
  """8x8 digit images (1797, 64 features, 10 classes), standardized with the
  training split's statistics."""
  from sklearn.datasets import load_digits as _load
  d = _load()
  return _split(d.data.astype(np.float64), d.target, test_fraction, seed, 10, "digits")


def teacher_task(in_dim: int = 32, classes: int = 10, n: int = 2000, seed: int = 0,
                 test_fraction: float = 0.2) -> Dataset:
  """Gaussian inputs labelled by a random two-layer tanh teacher network."""
  kx, k1, k2 = jax.random.split(jax.random.key(seed + 1000), 3)
  x = np.asarray(jax.random.normal(kx, (n, in_dim)), np.float64)
  w1 = np.asarray(jax.random.normal(k1, (in_dim, 64))) / np.sqrt(in_dim)
  w2 = np.asarray(jax.random.normal(k2, (64, classes))) / 8.0
  y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
  return _split(x, y, test_fraction, seed, classes, f"teacher({in_dim})")


def check_finite_examples(x: np.ndarray, name: str, where: str) -> None:
  """Raises ValueError naming how many entries of ``x`` are NaN/Inf and the
  first example holding one (training on them would stop at step 0)."""
  x = np.asarray(x)
  if not np.issubdtype(x.dtype, np.floating):
    return
  bad = ~np.isfinite(x)
  if bad.any():
    first = int(np.argmax(bad.reshape(len(x), -1).any(axis=1)))
    n = int(bad.sum())
    raise ValueError(f"expected finite {name} in {where}, got {n} NaN/Inf value"
                     f"{'s' if n > 1 else ''} (the first in example {first})")


def load_npz_dataset(path: str) -> Dataset:
  """A user's ``.npz`` with ``x_train, y_train, x_test, y_test`` (integer labels)."""
  try:
    d = dict(np.load(path, allow_pickle=False))
  except (OSError, ValueError) as e:
    raise ValueError(f"expected a readable .npz data file, got {path!r} ({e})") from None
  need = ("x_train", "y_train", "x_test", "y_test")
  if any(k not in d for k in need):
    raise ValueError(f"expected keys {', '.join(need)} in {path}, got {', '.join(sorted(d))}")
  xs, ys = (d["x_train"], d["x_test"]), (d["y_train"], d["y_test"])
  if xs[0].ndim != 2 or xs[1].ndim != 2 or xs[0].shape[1] != xs[1].shape[1]:
    raise ValueError(f"expected 2-D x_train/x_test with equal features, got {xs[0].shape}, {xs[1].shape}")
  if not all(np.issubdtype(v.dtype, np.integer) for v in ys):
    raise ValueError("expected integer labels in y_train and y_test")
  for part, x, y in (("train", xs[0], ys[0]), ("test", xs[1], ys[1])):
    if y.ndim != 1 or len(y) != len(x):
      raise ValueError(f"expected one label per example in y_{part}, got {len(x)} x_{part} rows "
                       f"and y_{part} of shape {y.shape}")
    if len(x) == 0:
      raise ValueError(f"expected at least one example in x_{part}, got none")
  if not all(np.issubdtype(v.dtype, np.number) for v in xs):
    raise ValueError(f"expected numeric x_train/x_test, got {xs[0].dtype}, {xs[1].dtype}")
  check_finite_examples(xs[0], "x_train", path)
  check_finite_examples(xs[1], "x_test", path)
  if min(ys[0].min(), ys[1].min()) < 0:
    raise ValueError(f"expected labels >= 0 in {path}, got {min(ys[0].min(), ys[1].min())}")
  classes = int(max(ys[0].max(), ys[1].max())) + 1
  return Dataset(xs[0].astype(np.float32), ys[0].astype(np.int32), xs[1].astype(np.float32),
                 ys[1].astype(np.int32), classes, path)
