"""The built-in MLP family as pure functions: init, probed forward, .npz I/O."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax.capture import _probed as _probe
from gradflow_jax.models import _initializers
from gradflow_jax.models._config import MLPConfig

NORM_EPS = 1e-5  # PyTorch's LayerNorm/BatchNorm default


class Trace(NamedTuple):
  """What the forward pass recorded, stacked over hidden layers.

  Attributes:
    pre: (depth, batch, width) pre-activations z_l, the activation's input
      (after normalization when there is one).
    post: (depth, batch, width) activations a_l = phi(z_l).
    hidden: (depth, batch, width) the layer outputs h_l that feed the next
      layer (``post`` itself for a plain MLP, the residual stream otherwise).
  """
  pre: jax.Array
  post: jax.Array
  hidden: jax.Array


class Perturb(NamedTuple):
  """Zeros added at the tap points, one array per hidden layer (not stacked,
  so the backward pass writes each layer's cotangent once); the gradient with
  respect to them is dL/dz_l (``pre``) and dL/da_l (``post``)."""
  pre: tuple[jax.Array, ...]
  post: tuple[jax.Array, ...]


def zero_perturb(cfg: MLPConfig, batch_shape: tuple[int, ...]) -> Perturb:
  z = jnp.zeros(tuple(batch_shape) + (cfg.width,), cfg.jnp_dtype)
  return Perturb((z,) * cfg.depth, (z,) * cfg.depth)


def init_mlp(key: jax.Array, cfg: MLPConfig) -> dict[str, Any]:
  """Draws parameters for ``cfg``.

  Returns:
    ``{"layers": [{"w": (fan_in, fan_out), "b": (fan_out,)}, ...]}`` with the
    output layer last, plus ``"norm"`` (per hidden layer ``{"scale", "bias"}``)
    and ``"prelu"`` (per hidden layer scalar slope) when the config uses them.

  Example:
    >>> cfg = MLPConfig(in_dim=4, width=8, depth=3, out_dim=2, activation="tanh")
    >>> [l["w"].shape for l in init_mlp(jax.random.key(0), cfg)["layers"]]
    [(4, 8), (8, 8), (8, 8), (8, 2)]
  """
  spec = cfg.init_spec
  winit = _initializers.initializer(spec.name, spec.gain)
  dtype = cfg.jnp_dtype
  draw = jnp.float64 if cfg.dtype == "float64" else jnp.float32  # low precision: draw in f32
  layers = []
  for k, (fan_in, fan_out) in zip(jax.random.split(key, len(cfg.dense_shapes)),
                                  cfg.dense_shapes):
    kw, kb = jax.random.split(k)
    w = winit(kw, (fan_in, fan_out), draw).astype(dtype)
    if spec.name == "torch_default" and cfg.sigma_b == 0:
      bound = 1.0 / np.sqrt(fan_in)
      b = jax.random.uniform(kb, (fan_out,), draw, -bound, bound)
    else:
      b = cfg.sigma_b * jax.random.normal(kb, (fan_out,), draw)
    layers.append({"w": w, "b": b.astype(dtype)})
  params: dict[str, Any] = {"layers": layers}
  if cfg.norm is not None:
    params["norm"] = [{"scale": jnp.ones((cfg.width,), dtype),
                       "bias": jnp.zeros((cfg.width,), dtype)}
                      for _ in range(cfg.depth)]
  if cfg.activation == "prelu":
    params["prelu"] = [jnp.asarray(cfg.prelu_init, dtype) for _ in range(cfg.depth)]
  return params


def check_params(cfg: MLPConfig, params) -> None:
  """Raises ValueError when ``params`` does not have the layout ``cfg`` implies."""
  if not isinstance(params, dict) or "layers" not in params:
    raise ValueError("expected params as a dict with a 'layers' list, got "
                     f"{type(params).__name__}")
  layers = params["layers"]
  if len(layers) != len(cfg.dense_shapes):
    raise ValueError(f"expected {len(cfg.dense_shapes)} dense layers for this config "
                     f"(depth {cfg.depth}, residual={cfg.residual}), got {len(layers)}")
  for i, (layer, (fi, fo)) in enumerate(zip(layers, cfg.dense_shapes)):
    if tuple(np.shape(layer["w"])) != (fi, fo) or tuple(np.shape(layer["b"])) != (fo,):
      raise ValueError(f"expected layer {i} weights of shape {(fi, fo)} (fan_in, fan_out) and "
                       f"bias {(fo,)}, got {tuple(np.shape(layer['w']))} and "
                       f"{tuple(np.shape(layer['b']))}")
  for key, needed in (("norm", cfg.norm is not None), ("prelu", cfg.activation == "prelu")):
    if needed and len(params.get(key, ())) != cfg.depth:
      raise ValueError(f"expected params[{key!r}] with {cfg.depth} entries, got "
                       f"{len(params.get(key, ()))}")


def check_inputs(cfg: MLPConfig, x) -> None:
  shape = np.shape(x)
  if len(shape) not in (1, 2) or shape[-1] != cfg.in_dim:
    raise ValueError(f"expected inputs of shape (batch, {cfg.in_dim}), got {tuple(shape)}")
  if cfg.norm == "batchnorm" and len(shape) != 2:
    raise ValueError(f"expected a batch (batch, {cfg.in_dim}) for batchnorm, got {tuple(shape)}")


def _row(v, like):
  """``v`` (features,) shaped to broadcast against ``like`` without rank promotion."""
  return v.reshape((1,) * (like.ndim - 1) + v.shape)


def _dense(layer, h):
  return h @ layer["w"] + _row(layer["b"], h[..., :1])


def _normalize(cfg, norm_params, z):
  axis = 0 if cfg.norm == "batchnorm" else -1
  mean = jnp.mean(z, axis=axis, keepdims=True)
  var = jnp.var(z, axis=axis, keepdims=True)
  zhat = (z - mean) * jax.lax.rsqrt(var + NORM_EPS)
  return zhat * _row(norm_params["scale"], z) + _row(norm_params["bias"], z)


def layer_params(cfg: MLPConfig, params, l: int) -> dict:
  """Everything hidden layer ``l`` uses: ``w``, ``b``, and where the config has
  them ``v``/``c`` (residual second dense layer), ``norm`` and ``slope``."""
  dense = cfg.hidden_dense_index[l]
  lp = {"w": params["layers"][dense]["w"], "b": params["layers"][dense]["b"]}
  if cfg.residual and l > 0:
    lp["v"] = params["layers"][dense + 1]["w"]
    lp["c"] = params["layers"][dense + 1]["b"]
  if cfg.norm is not None:
    lp["norm"] = params["norm"][l]
  if cfg.activation == "prelu":
    lp["slope"] = params["prelu"][l]
  return lp


def stacked_layer_params(cfg: MLPConfig, params, start: int = 1) -> dict:
  """``layer_params`` of layers ``start..depth-1`` stacked on a leading axis
  (all width x width), ready for ``lax.scan``."""
  per_layer = [layer_params(cfg, params, l) for l in range(start, cfg.depth)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)


def hidden_step(cfg: MLPConfig, lp: dict, h: jax.Array, pz=None, pa=None, on_z=None,
                on_a=None):
  """One hidden layer: ``(z, a, h_next)`` from the previous output ``h``.

  ``pz``/``pa`` are perturbations added to z and a (the probe slots);
  ``on_z``/``on_a``, if given, map z and a instead (``gf.tap`` calls).
  """
  z = _dense(lp, h)
  if cfg.norm is not None:
    z = _normalize(cfg, lp["norm"], z)
  if pz is not None:
    z = z + pz
  if on_z is not None:
    z = on_z(z)
  a = cfg.act(z, lp.get("slope"))
  if pa is not None:
    a = a + pa
  if on_a is not None:
    a = on_a(a)
  h_next = h + _dense({"w": lp["v"], "b": lp["c"]}, a) if "v" in lp else a
  return z, a, h_next


def mlp_apply(cfg: MLPConfig, params, x: jax.Array,
              perturb: Perturb | None = None, stack: bool = True) -> tuple[jax.Array, Trace]:
  """The probed forward function: ``(output, trace)``.

  ``perturb`` (see :func:`zero_perturb`) is added to every z_l and a_l, so that
  the gradient of a loss with respect to it is dL/dz_l and dL/da_l. With
  ``stack=False`` the trace holds tuples of per-layer arrays (no copies).
  """
  h = jnp.asarray(x, cfg.jnp_dtype)
  pres, posts, hiddens = [], [], []
  for l in range(cfg.depth):
    pz = perturb.pre[l] if perturb is not None else None
    pa = perturb.post[l] if perturb is not None else None
    z, a, h = hidden_step(cfg, layer_params(cfg, params, l), h, pz, pa)
    pres.append(z)
    posts.append(a)
    hiddens.append(h)
  out = _dense(params["layers"][-1], h)
  if not stack:
    return out, Trace(tuple(pres), tuple(posts), tuple(hiddens))
  post = jnp.stack(posts)
  hidden = jnp.stack(hiddens) if cfg.residual else post
  return out, Trace(jnp.stack(pres), post, hidden)


def mlp_model(cfg: MLPConfig, params) -> _probe.ProbedModel:
  """The built-in MLP as a :class:`ProbedModel`: taps ``layer_l/pre`` (z_l,
  role ``pre``, with the config's activation) and ``layer_l/post`` (a_l), so
  every consumer of users' models measures it the same way."""
  check_params(cfg, params)

  def apply_fn(params, x):
    h = jnp.asarray(x, cfg.jnp_dtype)
    for l in range(cfg.depth):
      _, _, h = hidden_step(
          cfg, layer_params(cfg, params, l), h,
          on_z=lambda z, l=l: _probe.tap(f"layer_{l}/pre", z, "pre", cfg.activation),
          on_a=lambda a, l=l: _probe.tap(f"layer_{l}/post", a, "post"))
    return _dense(params["layers"][-1], h)
  return _probe.probed(apply_fn, params, f"mlp {cfg.depth}x{cfg.width} {cfg.activation}")


def mlp_forward(cfg: MLPConfig, params, x: jax.Array) -> tuple[jax.Array, Trace]:
  """Output and per-hidden-layer trace (``trace.pre[l]``: (batch, width)).

  Example:
    >>> cfg = MLPConfig(in_dim=128, width=256, depth=10, out_dim=10, activation="tanh")
    >>> params = init_mlp(jax.random.key(0), cfg)
    >>> out, trace = mlp_forward(cfg, params, jnp.ones((64, 128)))
    >>> trace.post.shape
    (10, 64, 256)
  """
  check_params(cfg, params)
  check_inputs(cfg, x)
  return _mlp_forward_jit(cfg, params, x)


_mlp_forward_jit = jax.jit(lambda cfg, params, x: mlp_apply(cfg, params, x),
                           static_argnums=0)


def params_to_arrays(params) -> dict[str, np.ndarray]:
  """Flat ``{"w0", "b0", ..., "norm_scale0", ..., "prelu0"}`` host arrays."""
  out = {}
  for i, layer in enumerate(params["layers"]):
    out[f"w{i}"] = np.asarray(layer["w"])
    out[f"b{i}"] = np.asarray(layer["b"])
  for l, n in enumerate(params.get("norm", ())):
    out[f"norm_scale{l}"] = np.asarray(n["scale"])
    out[f"norm_bias{l}"] = np.asarray(n["bias"])
  for l, s in enumerate(params.get("prelu", ())):
    out[f"prelu{l}"] = np.asarray(s)
  return out


def load_npz(path: str | os.PathLike, cfg: MLPConfig) -> dict[str, Any]:
  """Loads weights trained elsewhere (keys ``w0, b0, w1, b1, ...``).

  Weights are (fan_in, fan_out), output layer last; optional keys
  ``norm_scale{l}``, ``norm_bias{l}`` and ``prelu{l}`` fill the normalization and
  PReLU parameters (defaults: 1, 0 and ``cfg.prelu_init``).

  Raises:
    ValueError: missing keys or shapes that do not match ``cfg`` (the message
      says which, and notes PyTorch's (fan_out, fan_in) layout).
  """
  try:
    data = dict(np.load(path, allow_pickle=False))
  except (OSError, ValueError) as e:
    raise ValueError(f"expected a readable .npz weights file, got {os.fspath(path)!r} ({e})") from None
  n = len(cfg.dense_shapes)
  found = sorted(k for k in data if k[:1] in "wb" and k[1:].isdigit())
  expected = [f"{p}{i}" for i in range(n) for p in "wb"]
  if sorted(expected) != found:
    raise ValueError(f"expected keys {', '.join(expected)} for {n} dense layers, got "
                     f"{', '.join(found) or 'none'}")
  dtype = cfg.jnp_dtype
  layers = []
  for i, (fi, fo) in enumerate(cfg.dense_shapes):
    w, b = data[f"w{i}"], data[f"b{i}"]
    if w.shape != (fi, fo):
      hint = " (PyTorch stores (fan_out, fan_in): transpose it)" if w.shape == (fo, fi) else ""
      raise ValueError(f"expected w{i} of shape {(fi, fo)} (fan_in, fan_out), got {w.shape}{hint}")
    if b.shape != (fo,):
      raise ValueError(f"expected b{i} of shape {(fo,)}, got {b.shape}")
    layers.append({"w": jnp.asarray(w, dtype), "b": jnp.asarray(b, dtype)})
  params: dict[str, Any] = {"layers": layers}
  if cfg.norm is not None:
    params["norm"] = [{"scale": jnp.asarray(data.get(f"norm_scale{l}", np.ones(cfg.width)), dtype),
                       "bias": jnp.asarray(data.get(f"norm_bias{l}", np.zeros(cfg.width)), dtype)}
                      for l in range(cfg.depth)]
  if cfg.activation == "prelu":
    params["prelu"] = [jnp.asarray(data.get(f"prelu{l}", cfg.prelu_init), dtype)
                       for l in range(cfg.depth)]
  check_params(cfg, params)
  return params
