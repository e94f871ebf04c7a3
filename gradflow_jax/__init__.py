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
from gradflow_jax import theory, types
from gradflow_jax.models._activations import ACTIVATIONS
from gradflow_jax.studies._analyze import analyze_model
from gradflow_jax.models._activations import get_activation
from gradflow_jax.models._config import MLPConfig
from gradflow_jax._data import load_digits
from gradflow_jax.studies._depth_study import depth_study, DepthStudySettings, mean_field_law
from gradflow_jax.studies._depth_study import residual_law
from gradflow_jax.studies._analyze import diagnose
from gradflow_jax.diagnosis._diagnose import diagnose_model
from gradflow_jax.studies._analyze import diagnose_rnn
from gradflow_jax.models._flax import as_probed, from_linen, from_nnx
from gradflow_jax.models._initializers import initializer, INITIALIZERS, recommended_init
from gradflow_jax.measure._jacobians import jacobian_spectra, layer_jacobian_norms, product_bound
from gradflow_jax.measure._jacobians import weight_spectral_norms
from gradflow_jax.models._losses import loss_value
from gradflow_jax.models._mlp import init_mlp, load_npz, mlp_forward, mlp_model
from gradflow_jax.measure._model_stats import infer_activations, model_flow_stats
from gradflow_jax.watch._monitor import find_monitor_state, gradient_flow_monitor, moment_norms
from gradflow_jax.watch._monitor import stop_if_nonfinite, stopped
from gradflow_jax.capture._probed import probed, ProbedModel, tap, TapInfo
from gradflow_jax.models._rnn import init_rnn, rnn_model
from gradflow_jax.measure._through_time import rnn_through_time
from gradflow_jax.models._rnn import RNNConfig
from gradflow_jax.measure._stats import activation_stats, flow_stats, gradient_stats
from gradflow_jax.studies._sweep import run_sweep, SweepSettings
from gradflow_jax.measure._tap_jacobians import tap_jacobian_norms
from gradflow_jax.studies._train import make_step, train, TrainConfig
from gradflow_jax.watch._flow_step import FlowStep, histogram as watch_histogram, HISTOGRAM_EDGES
from gradflow_jax.watch._watch import nnx_value_and_grad, UPDATE_RATIO_RULE, update_ratios
from gradflow_jax.watch._watch import value_and_grad
from gradflow_jax.studies._width_study import width_study, WidthStudySettings
from gradflow_jax.watch._writers import flat_metrics, JsonlWriter, log_step, StepLogger
from gradflow_jax.watch._writers import MetricWriter, read_jsonl, TensorBoardWriter

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
