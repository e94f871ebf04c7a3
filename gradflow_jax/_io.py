"""Host-side output: atomic file writes and JSON-safe conversion."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

import numpy as np

SCHEMA_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to a temporary file beside ``path``, then renames it, so a
  reader never sees a half-written file."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual mode
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def to_jsonable(obj: Any) -> Any:
  """Arrays to lists, NamedTuples to dicts, NaN/Inf to ``None`` (strict JSON)."""
  if hasattr(obj, "_asdict"):
    return {k: to_jsonable(v) for k, v in obj._asdict().items()}
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
    arr = np.asarray(obj)
    return to_jsonable(arr.tolist()) if arr.ndim else to_jsonable(arr.item())
  if isinstance(obj, (bool, np.bool_)):
    return bool(obj)
  if isinstance(obj, (int, np.integer)):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  return obj


def write_json(path: str | os.PathLike, payload: dict) -> None:
  """Writes ``payload`` (with ``schema_version``) as strict JSON, atomically."""
  body = {"schema_version": SCHEMA_VERSION, **to_jsonable(payload)}
  text = json.dumps(body, indent=1, allow_nan=False)
  atomic_write_bytes(path, (text + "\n").encode())


def save_figure(fig, path: str | os.PathLike | None, dpi: int = 110):
  """Saves a matplotlib figure as PNG atomically (returns None), or returns
  the figure itself when ``path`` is None (to show it in a notebook)."""
  import io
  if path is None:
    return fig
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
  atomic_write_bytes(path, buf.getvalue())
  return None


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
  """Writes an ``.npz`` archive atomically."""
  import io
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  atomic_write_bytes(path, buf.getvalue())
