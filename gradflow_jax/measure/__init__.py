"""``gf.measure``: measurements: statistics and gradient norms of any probed
model or the built-in MLP, Jacobians (local per tap, input-output at every
depth), weight spectra, the RNN's gradients through time."""

from gradflow_jax.measure._jacobians import (jacobian_spectra, layer_jacobian_norms,
                                             product_bound, weight_spectral_norms)
from gradflow_jax.measure._model_stats import infer_activations, model_flow_stats
from gradflow_jax.measure._stats import activation_stats, flow_stats, gradient_stats
from gradflow_jax.measure._tap_jacobians import tap_jacobian_norms
from gradflow_jax.measure._through_time import rnn_through_time

__all__ = ("activation_stats", "flow_stats", "gradient_stats", "infer_activations",
           "jacobian_spectra", "layer_jacobian_norms", "model_flow_stats", "product_bound",
           "rnn_through_time", "tap_jacobian_norms", "weight_spectral_norms")
