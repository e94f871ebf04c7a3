"""gradflow_jax: see how signal and gradient travel through a network.

One interface at the core: a :class:`ProbedModel`, ``forward(params, x,
perturb) -> (output, taps)``. Producers turn models into one (``from_linen``,
``from_nnx``, ``probed`` with ``tap``, ``mlp_model``); consumers measure any of
them (``model_flow_stats``, ``tap_jacobian_norms``, ``diagnose_model``).
In a user's own training step, ``value_and_grad`` / ``nnx_value_and_grad``
return the same statistics from the step's own forward/backward pass, and
``log_step`` sends them to JSON Lines, TensorBoard or any CLU-style writer.
"""

from gradflow_jax import measure, models, plots, studies, theory, types, watch
from gradflow_jax._data import load_digits
from gradflow_jax.capture._probed import probed, ProbedModel, tap, TapInfo
from gradflow_jax.diagnosis._diagnose import diagnose_model
from gradflow_jax.measure import (activation_stats, flow_stats, gradient_stats,
                                  infer_activations, jacobian_spectra, layer_jacobian_norms,
                                  model_flow_stats, rnn_through_time, tap_jacobian_norms)
from gradflow_jax.models import (ACTIVATIONS, as_probed, from_linen, from_nnx, get_activation,
                                 init_mlp, init_rnn, initializer, loss_value, MLPConfig,
                                 mlp_model, rnn_model, RNNConfig)
from gradflow_jax.render import _report  # noqa: F401  (registers the notebook views)
from gradflow_jax.render._forensics_plots import write_forensics
from gradflow_jax.studies import depth_study, width_study
from gradflow_jax.studies._analyze import analyze_model, diagnose, diagnose_rnn
from gradflow_jax.watch import FlowStep, log_step, nnx_value_and_grad, StepLogger, value_and_grad

__version__ = "0.4.0"

__all__ = (
    # taps and probed models
    "tap", "probed", "ProbedModel", "TapInfo", "as_probed", "from_linen", "from_nnx",
    # the built-in families
    "MLPConfig", "init_mlp", "mlp_model", "RNNConfig", "init_rnn", "rnn_model",
    # measurements
    "model_flow_stats", "tap_jacobian_norms", "infer_activations", "flow_stats",
    "activation_stats", "gradient_stats", "jacobian_spectra", "layer_jacobian_norms",
    "rnn_through_time",
    # measure once, then diagnose
    "analyze_model", "diagnose", "diagnose_model", "diagnose_rnn",
    # a user's own training loop
    "value_and_grad", "nnx_value_and_grad", "FlowStep", "log_step", "StepLogger",
    "write_forensics",
    # studies of a model family
    "depth_study", "width_study",
    # building blocks
    "ACTIVATIONS", "get_activation", "initializer", "loss_value", "load_digits",
    # namespaces
    "measure", "models", "plots", "studies", "theory", "types", "watch",
)
