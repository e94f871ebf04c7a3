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
from gradflow_jax import theory
from gradflow_jax._jacobians import jacobian_spectra
from gradflow_jax._jacobians import JacobianSpectra
from gradflow_jax._jacobians import layer_jacobian_norms
from gradflow_jax._jacobians import log_spaced_depths
from gradflow_jax._jacobians import power_top_singular_value
from gradflow_jax._jacobians import product_bound
from gradflow_jax._jacobians import weight_spectral_norms
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
from gradflow_jax._diagnose import diagnose
from gradflow_jax._diagnose import diagnose_model
from gradflow_jax._diagnose import diagnose_rnn
from gradflow_jax._diagnose import diagnose_stats
from gradflow_jax._diagnose import Finding
from gradflow_jax._model_stats import model_flow_stats
from gradflow_jax._model_stats import ModelFlowStats
from gradflow_jax._model_stats import tap_jacobian_norms
from gradflow_jax._probe import from_linen
from gradflow_jax._probe import from_nnx
from gradflow_jax._probe import probed
from gradflow_jax._probe import tap
from gradflow_jax._data import Dataset
from gradflow_jax._data import load_digits
from gradflow_jax._data import load_npz_dataset
from gradflow_jax._data import teacher_task
from gradflow_jax._monitor import find_monitor_state
from gradflow_jax._monitor import gradient_flow_monitor
from gradflow_jax._monitor import MonitorState
from gradflow_jax._train import make_optimizer
from gradflow_jax._train import make_step
from gradflow_jax._train import StepLog
from gradflow_jax._train import train
from gradflow_jax._train import TrainConfig
from gradflow_jax._train import TrainResult
from gradflow_jax._rnn import init_rnn
from gradflow_jax._rnn import rnn_apply
from gradflow_jax._rnn import rnn_through_time
from gradflow_jax._rnn import RNNConfig
from gradflow_jax._rnn import run_rnn_sweep
from gradflow_jax._stats import activation_stats
from gradflow_jax._stats import ActivationStats
from gradflow_jax._stats import first_nonfinite_layer
from gradflow_jax._stats import flow_stats
from gradflow_jax._stats import flow_stats_fn
from gradflow_jax._stats import FlowStats
from gradflow_jax._stats import gradient_stats
from gradflow_jax._stats import GradientStats
from gradflow_jax._stats import histograms
from gradflow_jax._stats import probe
from gradflow_jax._stats import trace_stats

from gradflow_jax._sweep import run_sweep
from gradflow_jax._sweep import SweepSettings

__version__ = "0.1.0"

__all__ = (
    "Activation",
    "activation_stats",
    "ACTIVATIONS",
    "ActivationStats",
    "check_params",
    "Dataset",
    "diagnose",
    "diagnose_model",
    "diagnose_rnn",
    "diagnose_stats",
    "find_monitor_state",
    "Finding",
    "first_nonfinite_layer",
    "flow_stats",
    "flow_stats_fn",
    "FlowStats",
    "from_linen",
    "from_nnx",
    "get_activation",
    "gradient_flow_monitor",
    "gradient_stats",
    "GradientStats",
    "histograms",
    "INACTIVE_DERIVATIVE_RATIO",
    "init_mlp",
    "init_rnn",
    "initializer",
    "INITIALIZERS",
    "InitSpec",
    "jacobian_spectra",
    "JacobianSpectra",
    "layer_jacobian_norms",
    "load_digits",
    "load_npz",
    "load_npz_dataset",
    "log_spaced_depths",
    "loss_value",
    "LOSSES",
    "make_optimizer",
    "make_step",
    "mlp_apply",
    "mlp_forward",
    "MLPConfig",
    "model_flow_stats",
    "ModelFlowStats",
    "MonitorState",
    "params_to_arrays",
    "Perturb",
    "power_top_singular_value",
    "probe",
    "probed",
    "product_bound",
    "recommended_init",
    "rnn_apply",
    "rnn_through_time",
    "RNNConfig",
    "run_rnn_sweep",
    "run_sweep",
    "SATURATION_DERIVATIVE_RATIO",
    "StepLog",
    "SweepSettings",
    "tap",
    "tap_jacobian_norms",
    "teacher_task",
    "theory",
    "Trace",
    "trace_stats",
    "train",
    "TrainConfig",
    "TrainResult",
    "weight_spectral_norms",
    "weight_variance",
    "zero_perturb",
)
