"""``gf.watch``: the monitored step in a user's own training loop and the
writers that log it.

  loss, grads, flow = gf.watch.value_and_grad(loss_fn)(params, x, y)
  gf.watch.log_step(gf.watch.JsonlWriter("log.jsonl"), step, flow)
"""

from gradflow_jax.watch._forensics import analyse as analyse_forensics
from gradflow_jax.watch._flow_step import FlowStep, histogram, Histogram, HISTOGRAM_EDGES
from gradflow_jax.watch._monitor import (find_monitor_state, gradient_flow_monitor,
                                         moment_norms, stop_if_nonfinite, stopped)
from gradflow_jax.watch._recorder import FlightRecorder, RecorderState, step_norms, StepNorms
from gradflow_jax.watch._watch import (nnx_value_and_grad, snapshot, UPDATE_RATIO_RULE,
                                       update_ratios, value_and_grad)
from gradflow_jax.watch._writers import (flat_metrics, JsonlWriter, log_step, MetricWriter,
                                         read_jsonl, StepLogger, TensorBoardWriter)

__all__ = ("analyse_forensics", "FlightRecorder", "RecorderState", "step_norms", "StepNorms",
           "find_monitor_state", "flat_metrics", "FlowStep", "gradient_flow_monitor",
           "histogram", "Histogram", "HISTOGRAM_EDGES", "JsonlWriter", "log_step",
           "MetricWriter", "moment_norms", "nnx_value_and_grad", "read_jsonl", "snapshot", "StepLogger",
           "stop_if_nonfinite", "stopped", "TensorBoardWriter", "UPDATE_RATIO_RULE",
           "update_ratios", "value_and_grad")
