"""``gf.watch``: the monitored step in a user's own training loop, the
writers that log it, optimizer health and the flight recorder.

  loss, grads, flow = gf.watch.value_and_grad(loss_fn)(params, x, y)
  gf.watch.log_step(gf.watch.JsonlWriter("log.jsonl"), step, flow)
"""

from gradflow_jax.watch._curvature import (Curvature, CurvatureState, GradientNoise,
                                           learning_rate, NoiseState)
from gradflow_jax.watch._forensics import analyse as analyse_forensics
from gradflow_jax.watch._flow_step import FlowStep, histogram, Histogram, HISTOGRAM_EDGES
from gradflow_jax.watch._monitor import (find_monitor_state, gradient_flow_monitor,
                                         moment_norms, stop_if_nonfinite, stopped)
from gradflow_jax.watch._optimizer import adam_health, AdamHealth, find_adam_state
from gradflow_jax.watch._spectra import SpectraState, stable_ranks, WeightSpectra
from gradflow_jax.watch._recorder import FlightRecorder, RecorderState, step_norms, StepNorms
from gradflow_jax.watch._watch import (nnx_value_and_grad, snapshot, UPDATE_RATIO_RULE,
                                       update_ratios, value_and_grad)
from gradflow_jax.watch._metrics import tier_metrics
from gradflow_jax.watch._writers import (flat_metrics, JsonlWriter, log_step, MetricWriter,
                                         read_jsonl, StepLogger, TensorBoardWriter)

__all__ = (
    # the monitored step and its writers
    "value_and_grad", "nnx_value_and_grad", "FlowStep", "histogram", "Histogram",
    "HISTOGRAM_EDGES", "flat_metrics", "JsonlWriter", "log_step", "MetricWriter", "read_jsonl",
    "StepLogger", "TensorBoardWriter", "tier_metrics", "snapshot", "update_ratios", "UPDATE_RATIO_RULE",
    # optax: the monitor, the guard, moments
    "find_monitor_state", "gradient_flow_monitor", "moment_norms", "stop_if_nonfinite",
    "stopped", "adam_health", "AdamHealth", "find_adam_state",
    # weight spectra while training
    "WeightSpectra", "SpectraState", "stable_ranks",
    # curvature and gradient noise while training
    "Curvature", "CurvatureState", "GradientNoise", "NoiseState", "learning_rate",
    # the flight recorder and forensics
    "step_norms", "StepNorms", "FlightRecorder", "RecorderState", "analyse_forensics",
)
