"""gradflow_jax: see how signal and gradient travel through a network.

One interface at the core: a :class:`ProbedModel`, ``forward(params, x,
perturb) -> (output, taps)``. Producers turn models into one (``from_linen``,
``from_nnx``, ``probed`` with ``tap``, ``mlp_model``); consumers measure any of
them (``model_flow_stats``, ``tap_jacobian_norms``, ``diagnose_model``).
In a user's own training step, ``value_and_grad`` / ``nnx_value_and_grad``
return the same statistics from the step's own forward/backward pass, and
``log_step`` sends them to JSON Lines, TensorBoard or any CLU-style writer.
"""

from gradflow_jax import plots
from gradflow_jax.render import _report  # noqa: F401  (registers the notebook views)
from gradflow_jax import theory
from gradflow_jax import types
from gradflow_jax.models._activations import ACTIVATIONS
from gradflow_jax.studies._analyze import analyze_model
from gradflow_jax.models._activations import get_activation
from gradflow_jax.models._config import MLPConfig
from gradflow_jax._data import load_digits
from gradflow_jax.studies._depth_study import depth_study
from gradflow_jax.studies._depth_study import DepthStudySettings
from gradflow_jax.studies._depth_study import mean_field_law
from gradflow_jax.studies._depth_study import residual_law
from gradflow_jax.studies._analyze import diagnose
from gradflow_jax.diagnosis._diagnose import diagnose_model
from gradflow_jax.studies._analyze import diagnose_rnn
from gradflow_jax.models._flax import as_probed
from gradflow_jax.models._flax import from_linen
from gradflow_jax.models._flax import from_nnx
from gradflow_jax.models._initializers import INITIALIZERS
from gradflow_jax.models._initializers import initializer
from gradflow_jax.models._initializers import recommended_init
from gradflow_jax.measure._jacobians import jacobian_spectra
from gradflow_jax.measure._jacobians import layer_jacobian_norms
from gradflow_jax.measure._jacobians import product_bound
from gradflow_jax.measure._jacobians import weight_spectral_norms
from gradflow_jax.models._losses import loss_value
from gradflow_jax.models._mlp import init_mlp
from gradflow_jax.models._mlp import load_npz
from gradflow_jax.models._mlp import mlp_forward
from gradflow_jax.models._mlp import mlp_model
from gradflow_jax.measure._model_stats import infer_activations
from gradflow_jax.measure._model_stats import model_flow_stats
from gradflow_jax.watch._monitor import find_monitor_state
from gradflow_jax.watch._monitor import gradient_flow_monitor
from gradflow_jax.watch._monitor import moment_norms
from gradflow_jax.watch._monitor import stop_if_nonfinite
from gradflow_jax.watch._monitor import stopped
from gradflow_jax.capture._probed import ProbedModel
from gradflow_jax.capture._probed import probed
from gradflow_jax.capture._probed import tap
from gradflow_jax.capture._probed import TapInfo
from gradflow_jax.models._rnn import init_rnn
from gradflow_jax.models._rnn import rnn_model
from gradflow_jax.measure._through_time import rnn_through_time
from gradflow_jax.models._rnn import RNNConfig
from gradflow_jax.measure._stats import activation_stats
from gradflow_jax.measure._stats import flow_stats
from gradflow_jax.measure._stats import gradient_stats
from gradflow_jax.studies._sweep import run_sweep
from gradflow_jax.studies._sweep import SweepSettings
from gradflow_jax.measure._tap_jacobians import tap_jacobian_norms
from gradflow_jax.studies._train import make_step
from gradflow_jax.studies._train import train
from gradflow_jax.studies._train import TrainConfig
from gradflow_jax.watch._watch import FlowStep
from gradflow_jax.watch._watch import HISTOGRAM_EDGES
from gradflow_jax.watch._watch import histogram as watch_histogram
from gradflow_jax.watch._watch import nnx_value_and_grad
from gradflow_jax.watch._watch import update_ratios
from gradflow_jax.watch._watch import UPDATE_RATIO_RULE
from gradflow_jax.watch._watch import value_and_grad
from gradflow_jax.studies._width_study import width_study
from gradflow_jax.studies._width_study import WidthStudySettings
from gradflow_jax.watch._writers import flat_metrics
from gradflow_jax.watch._writers import JsonlWriter
from gradflow_jax.watch._writers import log_step
from gradflow_jax.watch._writers import StepLogger
from gradflow_jax.watch._writers import MetricWriter
from gradflow_jax.watch._writers import read_jsonl
from gradflow_jax.watch._writers import TensorBoardWriter

__version__ = "0.3.0"

__all__ = (
    "ACTIVATIONS",
    "activation_stats",
    "analyze_model",
    "as_probed",
    "depth_study",
    "DepthStudySettings",
    "diagnose",
    "diagnose_model",
    "diagnose_rnn",
    "find_monitor_state",
    "flat_metrics",
    "flow_stats",
    "FlowStep",
    "from_linen",
    "from_nnx",
    "get_activation",
    "gradient_flow_monitor",
    "gradient_stats",
    "HISTOGRAM_EDGES",
    "infer_activations",
    "init_mlp",
    "init_rnn",
    "initializer",
    "INITIALIZERS",
    "jacobian_spectra",
    "JsonlWriter",
    "layer_jacobian_norms",
    "load_digits",
    "load_npz",
    "log_step",
    "loss_value",
    "make_step",
    "mean_field_law",
    "mlp_forward",
    "mlp_model",
    "MetricWriter",
    "MLPConfig",
    "moment_norms",
    "nnx_value_and_grad",
    "model_flow_stats",
    "ProbedModel",
    "probed",
    "product_bound",
    "recommended_init",
    "read_jsonl",
    "residual_law",
    "rnn_model",
    "rnn_through_time",
    "RNNConfig",
    "run_sweep",
    "stop_if_nonfinite",
    "stopped",
    "StepLogger",
    "SweepSettings",
    "tap",
    "tap_jacobian_norms",
    "TensorBoardWriter",
    "TapInfo",
    "plots",
    "theory",
    "types",
    "train",
    "TrainConfig",
    "update_ratios",
    "width_study",
    "WidthStudySettings",
    "UPDATE_RATIO_RULE",
    "value_and_grad",
    "watch_histogram",
    "weight_spectral_norms",
)
