"""The one statistics body: per row (a tap, a layer), the moments,
saturation, dead and always-active units and non-finite counts of a tensor,
reduced in groups; and gradient norms. Pure, jit-able, no host sync."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow_jax.measure import _backend


class ActivationStats(NamedTuple):
  """Per hidden layer, each of shape (depth,).

  Attributes:
    mean, std, min, max: of the activations a_l over every unit-example pair
      (finite entries only; std is the sample std, ddof=1, as ``torch.std``).
      Healthy: std of order 1/3 to 1, not shrinking or growing with depth.
    saturation_fraction: share of unit-example pairs whose pre-activation is in
      a flat tail (``Activation.is_saturated``); above ~0.1 gradients suffer.
    dead_fraction: share of units inactive (zero derivative) on every example.
    zero_fraction: share of unit-example pairs with an activation of exactly 0.
    nonfinite: number of NaN/Inf entries in z_l or a_l.
    always_active_fraction: share of units active on every example (NaN where
      the activation has no inactive region, or is unknown). Next to a high
      dead fraction it tells dying units (few always-active ones) from
      examples that have collapsed onto one direction (units constant on the
      batch both ways, as deep in a ReLU net at criticality).
  """
  mean: jax.Array
  std: jax.Array
  min: jax.Array
  max: jax.Array
  saturation_fraction: jax.Array
  dead_fraction: jax.Array
  zero_fraction: jax.Array
  nonfinite: jax.Array
  always_active_fraction: jax.Array


def _count(mask, dtype):
  """Per row (leading axis), the number of True entries. Summed as floats
  (exact below 2**24 entries) when that is exact: XLA:CPU reduces floats with
  vectorized kernels and integers with a slow generic loop (measured 2-3x
  slower per reduction)."""
  if mask[0].size < 2**24:
    return _per_row(jnp.sum, mask.astype(dtype))
  return _per_row(jnp.sum, mask.astype(jnp.int32)).astype(dtype)


class Row(NamedTuple):
  """One layer or tap for the statistics body.

  ``values`` are described (moments, zero fraction); ``tested`` (the
  activation's input) gets ``act``'s saturation and dead-unit tests. Without an
  activation, saturation is NaN and a dead unit is one whose value is exactly 0
  on every example. ``tested`` may be ``values`` itself. Rows of one
  ``family`` (the layers of one scanned tap, in layer order) are kept
  together, in order, inside their group: XLA then reads their run of slices
  as the scan's own stacked output instead of copying each slice.
  """
  values: jax.Array
  tested: jax.Array
  act: object = None
  slope: object = None
  family: object = None


def _group_rows(rows: list[Row]) -> list[list[int]]:
  """Indices of rows that can be stacked and reduced together: same shapes,
  dtypes and tests, no per-row slope, at most ``group_limit`` entries a group,
  rows of one family only with each other, and above ``stack_limit`` entries
  a row other rows not at all (``_backend.stacking_limits``). One
  reduction over a stack replaces a kernel launch per row, which on CPU costs
  more than the arithmetic for tensors of ~1e4 entries."""
  group_limit, stack_limit = _backend.stacking_limits()
  groups, open_groups = [], {}
  for k, r in enumerate(rows):
    if r.slope is not None or r.values.size >= group_limit:
      groups.append([k])
      continue
    same = r.tested is r.values
    key = (r.values.shape, r.values.dtype, same, None if same else (r.tested.shape, r.tested.dtype),
           id(r.act))
    if r.family is not None:
      key += (("family", r.family),)
    elif r.values.size > stack_limit:
      key += (("alone", k),)
    group = open_groups.get(key)
    if group is None or (len(group) + 1) * r.values.size > group_limit:
      group = open_groups[key] = []
      groups.append(group)
    group.append(k)
  first: dict = {}  # family -> its first row
  for k, r in enumerate(rows):
    first.setdefault(k if r.family is None else r.family, k)
  place = lambda k: (first[k if rows[k].family is None else rows[k].family], k)
  return [sorted(g, key=place) for g in groups]


def _stack(arrays):
  return arrays[0][None] if len(arrays) == 1 else jnp.stack(arrays)


class _Group(NamedTuple):
  """Rows of one group stacked on a leading axis: values (G, ...), tested (G, ...)."""
  values: jax.Array
  tested: jax.Array
  act: object
  slope: object
  same: bool


def _per_row(fn, x):
  """``fn`` reduced over every axis but the leading (row) one (no reshape: a
  reshape that merges sharded axes would gather the tensor onto one device)."""
  return fn(x, axis=tuple(range(1, x.ndim)))


def _first_entry(x):
  """Per row, its first entry."""
  return x[(slice(None),) + (0,) * (x.ndim - 1)]


def _per_row_value(c, like):
  """Per-row scalars (rows,) shaped to broadcast against ``like`` (rows, ...)."""
  return c.reshape((-1,) + (1,) * (like.ndim - 1))


def _over_examples(fn, x):
  """(rows, units): ``fn`` reduced over every axis but the first (rows) and
  the last (units)."""
  return fn(x, axis=tuple(range(1, x.ndim - 1)))


def _broadcast_slope(g: _Group):
  """A PReLU group's slope shaped to broadcast against its tested values, or
  None (the activation's default slope)."""
  if g.slope is None:
    return None
  return jnp.reshape(g.slope, (1,) * (g.tested.ndim - jnp.ndim(g.slope)) + jnp.shape(g.slope))


def _tests(g: _Group, dtype, size):
  """(saturation fraction, dead fraction, always-active fraction) per row. A
  unit is dead when it is inactive on every example; for one-sided bounds that
  is a test of its largest (or smallest) value, a plain reduction, which
  XLA:CPU runs several times faster than the reduction of a mask (and
  always-active is the test of the other extreme)."""
  rows = g.values.shape[:1]
  nan = jnp.full(rows, jnp.nan, jnp.float32)
  if g.act is None:  # dead: exactly 0 on every example
    v = g.values
    return jnp.full(rows, jnp.nan, dtype), _unit_share((_over_examples(jnp.max, v) == 0)
                                                       & (_over_examples(jnp.min, v) == 0)), nan
  lo, hi = g.act.saturation_bounds
  if math.isinf(lo) and math.isinf(hi):
    sat = jnp.zeros(rows, dtype)
  else:
    sat = _count(g.act.is_saturated(g.tested), dtype) / size
  lo, hi = g.act.inactive_bounds
  t = g.tested
  if g.act.name == "prelu":
    inactive = g.act.is_inactive(g.tested, _broadcast_slope(g))
    return sat, _dead_fraction(inactive), _dead_fraction(~inactive)
  if math.isinf(lo) and math.isinf(hi):
    return sat, jnp.zeros(rows, jnp.float32), nan
  if math.isinf(hi):  # inactive at z <= lo
    return (sat, _unit_share(_over_examples(jnp.max, t) <= lo),
            _unit_share(_over_examples(jnp.min, t) > lo))
  if math.isinf(lo):  # inactive at z > hi
    return (sat, _unit_share(_over_examples(jnp.min, t) > hi),
            _unit_share(_over_examples(jnp.max, t) <= hi))
  inactive = g.act.is_inactive(g.tested)
  return sat, _dead_fraction(inactive), _dead_fraction(~inactive)


def _unit_share(mask):
  """Per row, the share of True among the units of a (rows, ..., units) mask."""
  return _per_row(jnp.mean, mask.astype(jnp.float32))


def _dead_fraction(inactive):
  """Per row, the share of units (last axis) inactive on every example (float
  min over the examples: the fast reduction, see ``_count``)."""
  return _unit_share(_over_examples(jnp.min, inactive.astype(jnp.float32)))


def _masked_group(g: _Group):
  """Statistics of each row over its finite entries, in ActivationStats order."""
  values = g.values
  size = values[0].size
  finite = jnp.isfinite(values)
  shift = _first_entry(values)
  shift = _per_row_value(jnp.where(jnp.isfinite(shift), shift, 0), values)
  d = jnp.where(finite, values - shift, 0)
  n = _count(finite, values.dtype)
  s1 = _per_row(jnp.sum, d)
  s2 = _per_row(jnp.sum, d * d)
  mean_d = s1 / n
  var = jnp.maximum(s2 - s1 * mean_d, 0) / (n - 1)
  big = jnp.asarray(jnp.inf, values.dtype)
  bad = ~finite
  if not g.same:
    bad = bad | ~jnp.isfinite(g.tested)
  sat, dead, active = _tests(g, values.dtype, size)
  return (mean_d + shift.reshape(-1), jnp.sqrt(var),
          _per_row(jnp.min, jnp.where(finite, values, big)),
          _per_row(jnp.max, jnp.where(finite, values, -big)), sat, dead,
          _count(values == 0, values.dtype) / size,
          _count(bad, values.dtype).astype(jnp.int32), active)


_EXACT_FLOAT32 = 2**24  # every integer up to this is a float32


def _unit_counts(masks: list, examples: int) -> list:
  """Per (row, unit), how many examples each mask holds on (float32, exact).

  Masks are counted together: mask k weighs ``(examples + 1) ** k`` in one
  float32 code per reduction, as many masks a code as keep its sums below
  2**24 (exact in float32), and the counts are the code's digits. XLA:CPU
  runs a mask's compare-and-convert as its own pass over the tensor, so one
  code for three masks saves two passes and two reductions (measured: three
  masks in one code cost what one mask does).
  """
  base = examples + 1
  if base > _EXACT_FLOAT32:
    return [_over_examples(jnp.sum, m.astype(jnp.int32)).astype(jnp.float32) for m in masks]
  per_code = 1
  while base ** (per_code + 1) <= _EXACT_FLOAT32:
    per_code += 1
  counts = []
  for start in range(0, len(masks), per_code):
    chunk = masks[start:start + per_code]
    # built in int32 and converted once: XLA:CPU then makes the code in one
    # pass (float selects would each be a pass, summed by the reduction)
    code = sum(m.astype(jnp.int32) * base ** k for k, m in enumerate(chunk)).astype(jnp.float32)
    total = _over_examples(jnp.sum, code)
    if len(chunk) == 1:
      counts.append(total)
      continue
    total = total.astype(jnp.int32)
    counts += [((total // base ** k) % base).astype(jnp.float32) for k in range(len(chunk))]
  return counts


def _row_total(unit_counts, size: int):
  """Per row, the sum of per-unit counts (exact: int32 above 2**24)."""
  if size < _EXACT_FLOAT32:
    return _per_row(jnp.sum, unit_counts)
  return _per_row(jnp.sum, unit_counts.astype(jnp.int32)).astype(jnp.float32)


def _finite_tests(g: _Group, unit_min, unit_max, dtype):
  """``_tests`` and the zero fraction of rows known to hold no NaN/Inf, from
  one reduction of packed masks (``_unit_counts``) and the per-unit extremes
  of the values: (saturation, dead, always active, zero fraction) per row."""
  values, tested = g.values, g.tested
  size = values[0].size
  examples = size // values.shape[-1]
  rows = values.shape[:1]
  nan = jnp.full(rows, jnp.nan, jnp.float32)
  masks = {"zero": values == 0}
  sat_lo, sat_hi = g.act.saturation_bounds if g.act is not None else (-math.inf, math.inf)
  if not (math.isinf(sat_lo) and math.isinf(sat_hi)):
    masks["sat"] = g.act.is_saturated(tested)
  lo, hi = g.act.inactive_bounds if g.act is not None else (-math.inf, math.inf)
  one_sided = math.isinf(lo) != math.isinf(hi)
  if g.act is not None and g.act.name == "prelu":
    masks["inactive"] = g.act.is_inactive(tested, _broadcast_slope(g))
  elif not (math.isinf(lo) and math.isinf(hi)) and not (one_sided and g.same):
    masks["inactive"] = g.act.is_inactive(tested)
  counts = dict(zip(masks, _unit_counts(list(masks.values()), examples)))
  share = lambda unit_mask: _per_row(jnp.mean, unit_mask.astype(jnp.float32))
  fraction = lambda name: _row_total(counts[name], size).astype(dtype) / size
  zero = fraction("zero")
  sat = fraction("sat") if "sat" in masks else (
      jnp.full(rows, jnp.nan, dtype) if g.act is None else jnp.zeros(rows, dtype))
  if g.act is None:  # dead: exactly 0 on every example
    return sat, share(counts["zero"] == examples), nan, zero
  if "inactive" in masks:
    return sat, share(counts["inactive"] == examples), share(counts["inactive"] == 0), zero
  if math.isinf(lo) and math.isinf(hi):
    return sat, jnp.zeros(rows, jnp.float32), nan, zero
  if math.isinf(hi):  # inactive at z <= lo; the tested values are the values
    return sat, share(unit_max <= lo), share(unit_min > lo), zero
  return sat, share(unit_min > hi), share(unit_max <= hi), zero  # inactive at z > hi


def _finite_group(g: _Group, s1):
  """``_masked_group`` of rows known to hold no NaN/Inf: the same statistics
  without the finiteness masks, which cost a pass over the tensor each. The
  variance is the two-pass one, centred on the mean from ``s1`` (each row's
  plain sum): on XLA:CPU a reduction of an elementwise expression with one
  consumer reads the tensor once, where a shifted tensor shared by two
  reductions is first written out whole (measured 2-3x slower per group once
  the taps outgrow the cache). The extremes are taken per unit first (the
  dead-unit tests use them), then per row."""
  values = g.values
  size = values[0].size
  mean = s1 / size
  d = values - _per_row_value(mean, values)
  var = _per_row(jnp.sum, d * d) / (size - 1)
  unit_min = _over_examples(jnp.min, values)
  unit_max = _over_examples(jnp.max, values)
  sat, dead, active, zero = _finite_tests(g, unit_min, unit_max, values.dtype)
  return (mean, jnp.sqrt(var), _per_row(jnp.min, unit_min),
          _per_row(jnp.max, unit_max), sat, dead, zero,
          jnp.zeros(values.shape[:1], jnp.int32), active)


def rows_stats(rows: list[Row]) -> ActivationStats:
  """ActivationStats of every row, stacked (one entry per row).

  Rows of one shape are reduced together (see ``_group_rows``). A plain sum is
  NaN/Inf whenever one of its entries is, so when every row's sums are finite
  the statistics skip the per-entry finiteness masks (exact either way; the
  masked path runs otherwise).
  """
  index = _group_rows(rows)
  groups = []
  for members in index:
    rs = [rows[k] for k in members]
    same = rs[0].tested is rs[0].values
    values = _stack([_acc(r.values) for r in rs])
    tested = values if same else _stack([r.tested for r in rs])
    slope = rs[0].slope
    groups.append(_Group(values, tested, rs[0].act, slope, same))
  s1 = [_per_row(jnp.sum, g.values) for g in groups]
  tested_sums = [_per_row(jnp.sum, _acc(g.tested)) for g in groups if not g.same]
  all_finite = jnp.all(jnp.isfinite(jnp.concatenate(s1 + tested_sums)))
  order = [k for members in index for k in members]
  inverse = [0] * len(order)
  for pos, k in enumerate(order):
    inverse[k] = pos

  def stacked(per_group):
    columns = [jnp.concatenate(column) for column in zip(*per_group)]
    if inverse != list(range(len(inverse))):
      columns = [c[jnp.asarray(inverse)] for c in columns]
    return ActivationStats(*columns)

  def finite():
    return stacked(_one_after_another(_finite_group, groups, s1))

  def masked():
    return stacked(_one_after_another(lambda g, _: _masked_group(g), groups, s1))
  return jax.lax.cond(all_finite, finite, masked)


def _one_after_another(group_stats, groups: list, sums: list) -> list:
  """``group_stats(group, sums)`` of each group; where ``_backend.in_sequence``
  says so, each group's computed only once the previous group's statistics
  are (``_backend.after``)."""
  nbytes = sum(g.values.nbytes + (0 if g.same else g.tested.nbytes) for g in groups)
  if not _backend.in_sequence(nbytes):
    return [group_stats(g, t) for g, t in zip(groups, sums)]
  out = []
  for g, t in zip(groups, sums):
    if out:
      values = _backend.after(g.values, out[-1])
      tested = values if g.same else _backend.after(g.tested, out[-1])
      g = g._replace(values=values, tested=tested)
    out.append(group_stats(g, t))
  return out


def _acc(x):
  """At least float32, for sums over many entries (bfloat16 inputs)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def first_flagged(flags, positions=None):
  """Along the last axis, the position (``positions[i]``, by default i) of
  the first True entry of ``flags``, or -1 where there is none: the first
  layer with a non-finite count, the first depth whose Jacobian holds
  NaN/Inf. The one place this is computed: NumPy in (host code), NumPy out;
  JAX arrays in (inside jit), JAX out."""
  xp = np if isinstance(flags, (np.ndarray, np.generic)) else jnp
  flags = xp.asarray(flags, bool)
  pos = xp.arange(flags.shape[-1]) if positions is None else xp.asarray(positions)
  return xp.where(xp.any(flags, -1), pos[xp.argmax(flags, -1)], -1)


def first_nonfinite_layer(counts: jax.Array) -> jax.Array:
  """Index of the first layer with a non-zero count, or -1 if there is none."""
  return first_flagged(counts > 0)
