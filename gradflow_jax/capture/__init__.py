"""Capture: taps, and the one rewrite that carries them out of a program.

``tap`` (and ``jax.ad_checkpoint.checkpoint_name``) marks a value; ``trace``
names a function's taps from its jaxpr; ``run`` evaluates it with each tap
taking a perturbation and handing out its value; ``capture`` does both.
"""

from gradflow_jax.capture._kinds import norm_slot
from gradflow_jax.capture._plan import ALL_LAYERS, family
from gradflow_jax.capture._primitive import ROLES, tap, TapInfo
from gradflow_jax.capture._rewrite import capture, HOWS, run, Tapped, trace

__all__ = ("ALL_LAYERS", "capture", "family", "HOWS", "norm_slot", "ROLES", "run", "tap",
           "TapInfo", "Tapped", "trace")
