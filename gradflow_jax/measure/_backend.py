"""Backend aids: scheduling and compilation hints measured on XLA:CPU, in one
place, behind one switch.

None of these changes a number the library computes (the tests compare
statistics with the aids on and off); each only changes how XLA schedules or
compiles the same program, and each says what it was measured to do. The
switch is the environment variable ``GRADFLOW_BACKEND_AIDS``: ``auto`` (the
default: on where ``jax.default_backend()`` is ``cpu``), ``1`` (on
everywhere) or ``0`` (off). It is read when a program is traced; a program
already compiled keeps what it was traced with.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp

_SWITCH = "GRADFLOW_BACKEND_AIDS"


def enabled() -> bool:
  """Whether the aids are on (see the module docstring)."""
  value = os.environ.get(_SWITCH, "auto").strip().lower()
  if value in ("0", "off", "false"):
    return False
  if value in ("1", "on", "true"):
    return True
  return jax.default_backend() == "cpu"


def share_scan_outputs(fun: Callable) -> Callable:
  """``fun`` with each scan's duplicate stacked outputs merged
  (``capture/_shared_outputs.py``). A scanned model's monitored pass saves
  taps that are also backward residuals (a Dense layer's input) twice, and
  XLA keeps both: a zero-filled (layers, ...) buffer and a copy per layer
  each. Measured: a 4 x 64 scan transformer's forward loop 12 -> 5 stacked
  outputs more than the bare step's; monitored step every step 1.41x -> 1.25x
  the bare one. Bit-identical results."""
  if not enabled():
    return fun
  from gradflow_jax.capture._shared_outputs import share_scan_outputs as share
  return share(fun)


def after(x, deps):
  """``x``, made to depend on ``deps`` (x + 0 * their finite sum; XLA keeps a
  float multiply by 0 but drops optimization barriers), so that XLA computes
  what reads ``x`` only once ``deps`` are done. The leaves of ``deps`` (small
  arrays) are summed as one: a reduction each would be a kernel each. With
  the aids off, ``x`` itself."""
  return _ordered(x, deps) if enabled() else x


def lapack_after(x, deps):
  """``x`` made to depend on ``deps`` (as :func:`after`) on the CPU whatever
  the switch: not an aid but a workaround. jaxlib's batched LAPACK kernels
  (SVD, eigh) each wait on the intra-op thread pool for their batch; two in
  flight at once deadlocked (in 3 of 4 runs on 2 cores, jax 0.10), so every
  LAPACK call of a depth study waits for the one before."""
  return _ordered(x, deps) if jax.default_backend() == "cpu" else x


def _ordered(x, deps):
  leaves = [jnp.ravel(d).astype(jnp.float32) for d in jax.tree.leaves(deps)]
  flat = leaves[0] if len(leaves) == 1 else jnp.concatenate(leaves)
  total = jnp.sum(jnp.where(jnp.isfinite(flat), flat, 0))
  return x + (0 * total).astype(x.dtype)


# bytes of tap values above which groups' statistics run one after another
SEQUENTIAL_BYTES = 2**22


def in_sequence(nbytes: int) -> bool:
  """Whether groups of statistics over ``nbytes`` of values should run one
  after another (each after the previous one, see :func:`after`). Left to
  itself XLA overlaps the groups and their temporaries add up: a CNN's 7
  taps of (32, 16, 16, 32) needed 7.3 MB (36.7 MB on the NaN-masked path)
  against 2.1 MB (7.3 MB) in sequence. XLA:CPU allocates a call's
  temporaries afresh each call, and above glibc's 32 MB mmap threshold every
  page is a page fault (measured: the CNN's every=10 off-step 1.44x the bare
  step with 36.7 MB of temporaries, 0.99x without). Below
  ``SEQUENTIAL_BYTES`` the sequence only costs (a 4 x 64 scan transformer's
  17 groups of 2.6 MB: ~85 kernels more)."""
  return enabled() and nbytes > SEQUENTIAL_BYTES


# entries per stacked group of statistics rows: above it, per-row kernels cost
# nothing extra
GROUP_ENTRIES = 2**22
# entries per row above which reducing a row alone is cheaper than the copy
# that stacks it with rows of other arrays: the kernel launch, ~10 us on CPU,
# is what stacking saves, and the copy of large rows costs more (measured on
# 21 rows, single-threaded: stacked rows of 2**14-2**15 entries cost 0.6x
# their rows alone, of 2**16-2**17 entries 1.8-1.9x). A family's run of
# slices (a scan's own stacked output) is never stacked with other rows: it
# is a group already, and the copy costs more than the launches it saves (a
# 4 x 64 scan transformer's 13 families of rows of 2**13-2**14 entries:
# monitored step 1.64x -> 1.60x the bare one).
ALONE_ENTRIES = 2**15


def stacking_limits() -> tuple[int, int]:
  """(entries per stacked group, entries per row above which a row is
  reduced alone) for ``_rows``' grouping of statistics: the measured
  values above with the aids on; with them off, one limit for both (rows of
  one shape stack up to ``GROUP_ENTRIES``, however large)."""
  return (GROUP_ENTRIES, ALONE_ENTRIES) if enabled() else (GROUP_ENTRIES, GROUP_ENTRIES)


def squared(stack):
  """``stack * stack`` for a norm, one factor through an optimization
  barrier: XLA would otherwise merge ``a * a`` with an optimizer's own
  ``g ** 2`` (Adam's second moment), write the shared square out whole and
  reduce it apart (measured: 11 kernel gradients of an MLP with adam, the
  norms cost 154 us over the update alone, 35 us with the barrier)."""
  return (jax.lax.optimization_barrier(stack) if enabled() else stack) * stack


def tuned_jit(level: int, static_argnums):
  """``jax.jit`` that, with the aids on, compiles at XLA backend optimization
  level ``level``. For programs compiled once per model and run few steps a
  lower level wins on compile + run (12-block transformer: the dependency
  program 6.7 s at the default level, 3.6 s at 0; Lanczos 12.4 s against
  10.1 s at 1; ``benchmarks/bench_models.py``). An XLA_FLAGS that sets the
  level itself keeps its own."""
  def wrap(fun):
    plain = jax.jit(fun, static_argnums=static_argnums)
    tuned = jax.jit(fun, static_argnums=static_argnums,
                    compiler_options={"xla_backend_optimization_level": level})

    @functools.wraps(fun)
    def call(*args):
      own = "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", "")
      return (tuned if enabled() and not own else plain)(*args)
    return call
  return wrap
