"""gradflow_jax: see how signal and gradient travel through a network.

One interface at the core: a :class:`ProbedModel`, ``forward(params, x,
perturb) -> (output, taps)``. Producers turn models into one (``from_linen``,
``from_nnx``, ``probed`` with ``tap``, ``mlp_model``); consumers measure any of
them (``model_flow_stats``, ``tap_jacobian_norms``, ``diagnose_model``).
"""

from gradflow_jax import theory
from gradflow_jax import types
from gradflow_jax._activations import ACTIVATIONS
from gradflow_jax._analyze import analyze_model
from gradflow_jax._activations import get_activation
from gradflow_jax._config import MLPConfig
from gradflow_jax._data import load_digits
from gradflow_jax._diagnose import diagnose
from gradflow_jax._diagnose import diagnose_model
from gradflow_jax._diagnose import diagnose_rnn
from gradflow_jax._flax import as_probed
from gradflow_jax._flax import from_linen
from gradflow_jax._flax import from_nnx
from gradflow_jax._initializers import INITIALIZERS
from gradflow_jax._initializers import initializer
from gradflow_jax._initializers import recommended_init
from gradflow_jax._jacobians import jacobian_spectra
from gradflow_jax._jacobians import layer_jacobian_norms
from gradflow_jax._jacobians import product_bound
from gradflow_jax._jacobians import weight_spectral_norms
from gradflow_jax._losses import loss_value
from gradflow_jax._mlp import init_mlp
from gradflow_jax._mlp import load_npz
from gradflow_jax._mlp import mlp_forward
from gradflow_jax._mlp import mlp_model
from gradflow_jax._model_stats import infer_activations
from gradflow_jax._model_stats import model_flow_stats
from gradflow_jax._monitor import find_monitor_state
from gradflow_jax._monitor import gradient_flow_monitor
from gradflow_jax._probe import ProbedModel
from gradflow_jax._probe import probed
from gradflow_jax._probe import tap
from gradflow_jax._probe import TapInfo
from gradflow_jax._rnn import init_rnn
from gradflow_jax._rnn import rnn_model
from gradflow_jax._rnn import rnn_through_time
from gradflow_jax._rnn import RNNConfig
from gradflow_jax._stats import activation_stats
from gradflow_jax._stats import flow_stats
from gradflow_jax._stats import gradient_stats
from gradflow_jax._sweep import run_sweep
from gradflow_jax._sweep import SweepSettings
from gradflow_jax._tap_jacobians import tap_jacobian_norms
from gradflow_jax._train import make_step
from gradflow_jax._train import train
from gradflow_jax._train import TrainConfig

__version__ = "0.3.0"

__all__ = (
    "ACTIVATIONS",
    "activation_stats",
    "analyze_model",
    "as_probed",
    "diagnose",
    "diagnose_model",
    "diagnose_rnn",
    "find_monitor_state",
    "flow_stats",
    "from_linen",
    "from_nnx",
    "get_activation",
    "gradient_flow_monitor",
    "gradient_stats",
    "infer_activations",
    "init_mlp",
    "init_rnn",
    "initializer",
    "INITIALIZERS",
    "jacobian_spectra",
    "layer_jacobian_norms",
    "load_digits",
    "load_npz",
    "loss_value",
    "make_step",
    "mlp_forward",
    "mlp_model",
    "MLPConfig",
    "model_flow_stats",
    "ProbedModel",
    "probed",
    "product_bound",
    "recommended_init",
    "rnn_model",
    "rnn_through_time",
    "RNNConfig",
    "run_sweep",
    "SweepSettings",
    "tap",
    "tap_jacobian_norms",
    "TapInfo",
    "theory",
    "types",
    "train",
    "TrainConfig",
    "weight_spectral_norms",
)
