"""Shared test helpers: tolerances per dtype (one place) and NumPy references."""

import os

import numpy as np

# float32 arithmetic through a few matmuls of width <= 64: ~1e-6 per op, a few
# hundred ops deep. float64: exact up to accumulation order.
TOL = {
    "float32": dict(rtol=2e-5, atol=2e-6),
    "float64": dict(rtol=1e-10, atol=1e-12),
}


def tol(dtype="float32"):
  return TOL[str(np.dtype(dtype))]


def np_act(name, z, slope=0.01, alpha=1.0):
  """Independent NumPy activations (float64)."""
  from math import erf, sqrt, pi
  z = np.asarray(z, np.float64)
  sig = lambda v: 1.0 / (1.0 + np.exp(-v))
  if name == "identity":
    return z
  if name == "sigmoid":
    return sig(z)
  if name == "tanh":
    return np.tanh(z)
  if name == "relu":
    return np.maximum(z, 0)
  if name in ("leaky_relu", "prelu"):
    return np.where(z >= 0, z, slope * z)
  if name == "elu":
    return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))
  if name == "selu":
    a, s = 1.6732632423543772, 1.0507009873554805
    return s * np.where(z > 0, z, a * np.expm1(np.minimum(z, 0)))
  if name == "gelu":
    return 0.5 * z * (1 + np.vectorize(erf)(z / sqrt(2)))
  if name == "gelu_tanh":
    return 0.5 * z * (1 + np.tanh(sqrt(2 / pi) * (z + 0.044715 * z**3)))
  if name == "silu":
    return z * sig(z)
  if name == "softplus":
    return np.logaddexp(z, 0)
  raise KeyError(name)


def np_mlp(params, x, act, *, residual=False, norm=None, slopes=None, eps=1e-5):
  """NumPy forward of the built-in MLP: (out, pre list, post list, hidden list)."""
  layers = [(np.asarray(l["w"], np.float64), np.asarray(l["b"], np.float64))
            for l in params["layers"]]
  depth = len(params.get("norm", [])) or None
  h = np.asarray(x, np.float64)
  pres, posts, hiddens = [], [], []
  i = 0
  l = 0
  while i < len(layers) - 1:
    w, b = layers[i]
    z = h @ w + b
    if norm is not None:
      axis = 0 if norm == "batchnorm" else -1
      m = z.mean(axis=axis, keepdims=True)
      v = z.var(axis=axis, keepdims=True)
      n = params["norm"][l]
      z = (z - m) / np.sqrt(v + eps) * np.asarray(n["scale"]) + np.asarray(n["bias"])
    a = act(z) if slopes is None else act(z, float(slopes[l]))
    if residual and l > 0:
      v_w, v_b = layers[i + 1]
      h = h + a @ v_w + v_b
      i += 2
    else:
      h = a
      i += 1
    pres.append(z); posts.append(a); hiddens.append(h)
    l += 1
  del depth
  w, b = layers[-1]
  return h @ w + b, pres, posts, hiddens


def read_event_file(folder):
  """Every (tag, step, value or histogram) in a TensorBoard event file, read
  with the TFRecord framing and the Event protobuf (not tensorboardX's
  writer code)."""
  import glob
  import struct
  from tensorboardX.proto import event_pb2
  (path,) = glob.glob(f"{folder}/events.out.tfevents.*")
  data, out, at = open(path, "rb").read(), [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
    at += 12 + length + 4
    for v in event.summary.value:
      out.append((v.tag, event.step, v.histo if v.HasField("histo") else v.simple_value))
  return out


def run_on_host_devices(args: list[str], devices: int = 4, timeout: int = 300):
  """``python *args`` in a subprocess that sees ``devices`` host CPU devices
  (the device count is fixed when JAX starts); fails the test on a non-zero
  exit with the end of its stderr. Returns its stdout."""
  import os
  import subprocess
  import sys
  # the suite's own XLA flags (conftest: optimization level 0) carry over
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
  run = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
  assert run.returncode == 0, run.stderr[-3000:]
  return run.stdout


# A --model factory small enough to compile fast: 64 -> 16 (tanh) -> 10, four
# parameter leaves (two kernels, two biases); its inputs are digits-shaped
TINY_FACTORY = """
import jax, numpy as np
from flax import linen as nn

class Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.tanh(nn.Dense(16)(x)))

def make():
  x = np.zeros((4, 64), np.float32)
  return Net(), Net().init(jax.random.key(0), x), (x, np.zeros(4, np.int32))
"""


def tiny_factory(folder) -> str:
  """Writes :data:`TINY_FACTORY` into ``folder``; returns its ``file.py:make``."""
  path = os.path.join(str(folder), "tiny_model.py")
  with open(path, "w") as f:
    f.write(TINY_FACTORY)
  return f"{path}:make"
