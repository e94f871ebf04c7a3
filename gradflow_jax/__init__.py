"""gradflow_jax: see how signal and gradient travel through a network."""

from gradflow_jax._activations import ACTIVATIONS
from gradflow_jax._activations import Activation
from gradflow_jax._activations import get_activation
from gradflow_jax._activations import INACTIVE_DERIVATIVE_RATIO
from gradflow_jax._activations import SATURATION_DERIVATIVE_RATIO
from gradflow_jax._config import MLPConfig
from gradflow_jax._initializers import INITIALIZERS
from gradflow_jax._initializers import InitSpec
from gradflow_jax._initializers import initializer
from gradflow_jax._initializers import recommended_init
from gradflow_jax._initializers import weight_variance
from gradflow_jax._losses import LOSSES
from gradflow_jax._losses import loss_value
from gradflow_jax._mlp import check_params
from gradflow_jax._mlp import init_mlp
from gradflow_jax._mlp import load_npz
from gradflow_jax._mlp import mlp_apply
from gradflow_jax._mlp import mlp_forward
from gradflow_jax._mlp import params_to_arrays
from gradflow_jax._mlp import Perturb
from gradflow_jax._mlp import Trace
from gradflow_jax._mlp import zero_perturb
from gradflow_jax._stats import activation_stats
from gradflow_jax._stats import ActivationStats
from gradflow_jax._stats import first_nonfinite_layer
from gradflow_jax._stats import flow_stats
from gradflow_jax._stats import flow_stats_fn
from gradflow_jax._stats import FlowStats
from gradflow_jax._stats import gradient_stats
from gradflow_jax._stats import GradientStats
from gradflow_jax._stats import histograms
from gradflow_jax._stats import trace_stats

__version__ = "0.1.0"

__all__ = (
    "ACTIVATIONS",
    "Activation",
    "ActivationStats",
    "FlowStats",
    "GradientStats",
    "INACTIVE_DERIVATIVE_RATIO",
    "INITIALIZERS",
    "InitSpec",
    "LOSSES",
    "MLPConfig",
    "Perturb",
    "params_to_arrays",
    "SATURATION_DERIVATIVE_RATIO",
    "Trace",
    "activation_stats",
    "check_params",
    "first_nonfinite_layer",
    "flow_stats",
    "flow_stats_fn",
    "get_activation",
    "gradient_stats",
    "histograms",
    "init_mlp",
    "initializer",
    "load_npz",
    "loss_value",
    "mlp_apply",
    "mlp_forward",
    "recommended_init",
    "trace_stats",
    "weight_variance",
    "zero_perturb",
)
