"""Loading what users hand over: model factories (``file.py:factory``), input
batches (.npy) and weight files (.npz). Each failure is a ValueError with one
line saying what was expected and what came."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import traceback

import numpy as np


def _where(e: BaseException, path: str) -> str:
  """'file:line' of the deepest frame of ``e`` inside the user's file."""
  frames = [f for f in traceback.extract_tb(e.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)]
  f = frames[-1] if frames else None
  return f"{os.path.basename(path)}:{f.lineno}" if f else os.path.basename(path)


@contextlib.contextmanager
def _on_path(folder: str):
  """The model file's own folder on ``sys.path`` (sibling imports work)."""
  sys.path.insert(0, folder)
  try:
    yield
  finally:
    with contextlib.suppress(ValueError):
      sys.path.remove(folder)


def load_factory(spec: str):
  """Imports ``path/to/file.py:factory`` and returns the factory function."""
  if ":" not in spec:
    raise ValueError(f"expected --model path/to/file.py:factory, got {spec!r}")
  path, name = spec.rsplit(":", 1)
  if not os.path.isfile(path):
    raise ValueError(f"expected an existing Python file, got {path!r}")
  module_spec = importlib.util.spec_from_file_location("_gradflow_user_model", path)
  module = importlib.util.module_from_spec(module_spec)
  with _on_path(os.path.dirname(os.path.abspath(path))):
    try:
      module_spec.loader.exec_module(module)
    except Exception as e:  # the user's code: any error, reported in one line
      raise ValueError(f"expected an importable module, got {type(e).__name__} at "
                       f"{_where(e, path)}: {e}") from None
  factory = getattr(module, name, None)
  if not callable(factory):
    raise ValueError(f"expected a function {name!r} in {path}, found "
                     f"{'nothing' if factory is None else type(factory).__name__}")
  factory.__gradflow_path__ = path
  return factory


FACTORY_EXTRAS = ("loss", "data", "batches")


def call_factory(factory, **kwargs):
  """``(model, params, (x, y), extras)`` from the user's factory, checked.

  The factory returns ``(model, params, (x, y))``, or with a fourth item, a
  dict of extras: ``"loss"``, a function ``loss(output, y) -> scalar`` used
  where no ``--loss`` is given, and ``"data"``, the training data of ``train
  --model`` as ``(x_train, y_train, x_test, y_test)``, and ``"batches"``, its
  training batches instead: an iterable of ``(x, y)`` or a function of the
  seed returning one (the test accuracy then uses ``"data"``'s test split, or
  the factory's batch). ``extras`` is ``{}`` when there is no fourth item."""
  path = getattr(factory, "__gradflow_path__", "the model file")
  try:
    made = factory(**kwargs)
  except Exception as e:  # the user's code: any error, reported in one line
    raise ValueError(f"expected the factory to run, got {type(e).__name__} at "
                     f"{_where(e, path)}: {e}") from None
  shape = (f"a {type(made).__name__} of {len(made)}" if isinstance(made, (tuple, list))
           else f"a {type(made).__name__}")
  if not isinstance(made, (tuple, list)) or len(made) not in (3, 4):
    raise ValueError("expected the factory to return (model, params, (x, y)) or (model, "
                     f"params, (x, y), extras), got {shape}")
  model, params, batch = made[:3]
  if not isinstance(batch, (tuple, list)) or len(batch) != 2:
    raise ValueError("expected the factory's third item to be the batch (x, y), got "
                     f"a {type(batch).__name__}")
  extras = made[3] if len(made) == 4 else {}
  if not isinstance(extras, dict) or set(extras) - set(FACTORY_EXTRAS):
    got = (sorted(set(extras) - set(FACTORY_EXTRAS)) if isinstance(extras, dict)
           else f"a {type(extras).__name__}")
    raise ValueError(f"expected the factory's fourth item to be a dict with keys among "
                     f"{', '.join(FACTORY_EXTRAS)}, got {got}")
  if "loss" in extras and not callable(extras["loss"]):
    raise ValueError("expected the factory's extras['loss'] to be a function loss(output, y), "
                     f"got a {type(extras['loss']).__name__}")
  if "data" in extras:
    extras = {**extras, "data": _factory_data(extras["data"])}
  if "batches" in extras and not (callable(extras["batches"])
                                  or hasattr(extras["batches"], "__iter__")):
    raise ValueError("expected the factory's extras['batches'] to be an iterable of (x, y) "
                     "training batches or a function of the seed returning one, got a "
                     f"{type(extras['batches']).__name__}")
  return model, params, tuple(batch), extras


def _factory_data(data):
  """The factory's ``(x_train, y_train, x_test, y_test)`` as arrays, checked."""
  if not isinstance(data, (tuple, list)) or len(data) != 4:
    shape = (f"a {type(data).__name__} of {len(data)}" if isinstance(data, (tuple, list))
             else f"a {type(data).__name__}")
    raise ValueError("expected the factory's extras['data'] to be (x_train, y_train, x_test, "
                     f"y_test), got {shape}")
  arrays = [np.asarray(a) for a in data]
  for (xs, ys), part in zip((arrays[:2], arrays[2:]), ("train", "test")):
    if len(xs) == 0 or len(xs) != len(ys):
      raise ValueError(f"expected the factory's x_{part} and y_{part} to hold the same number "
                       f"(>= 1) of examples, got {len(xs)} and {len(ys)}")
  from gradflow_jax import _data
  for a, name in zip(arrays, ("x_train", "y_train", "x_test", "y_test")):
    _data.check_finite_examples(a, name, "the factory's extras['data']")
  if arrays[0].shape[1:] != arrays[2].shape[1:]:
    raise ValueError(f"expected the factory's x_train and x_test to have the same example "
                     f"shape, got {arrays[0].shape[1:]} and {arrays[2].shape[1:]}")
  return tuple(arrays)


def load_inputs(path: str) -> np.ndarray:
  """A (batch >= 2, in_dim) float32 batch from a .npy file."""
  if not path.endswith(".npy"):
    raise ValueError(f"expected a .npy inputs file (numpy.save), got {path!r}")
  try:
    x = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"expected a readable .npy inputs file, got {path!r} ({e})") from None
  if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"expected inputs of shape (batch >= 2, in_dim), got {np.shape(x)}")
  if not np.issubdtype(x.dtype, np.number):
    raise ValueError(f"expected numeric inputs, got dtype {x.dtype}")
  return x.astype(np.float32)


def infer_shapes(path: str, residual: bool) -> dict:
  """in_dim, width, depth, out_dim of the built-in MLP from the ``w0..w{n-1}``
  entries of an .npz weights file."""
  try:
    with np.load(path, allow_pickle=False) as data:
      shapes = {k: data[k].shape for k in data.files if k[:1] == "w" and k[1:].isdigit()}
  except (OSError, ValueError, AttributeError) as e:
    raise ValueError(f"expected a readable .npz weights file (numpy.savez), got {path!r} "
                     f"({type(e).__name__})") from None
  n = len(shapes)
  if n < 2 or any(f"w{i}" not in shapes or len(shapes[f"w{i}"]) != 2 for i in range(n)):
    raise ValueError(f"expected 2-D weights w0..w{{n-1}} (n >= 2) in {path}, got "
                     f"{sorted(shapes) or 'none'}")
  depth = n // 2 if residual else n - 1
  if residual and n % 2:
    raise ValueError(f"expected an even number of dense layers for --residual, got {n}")
  return dict(in_dim=shapes["w0"][0], width=shapes["w0"][1], depth=depth,
              out_dim=shapes[f"w{n - 1}"][1])
