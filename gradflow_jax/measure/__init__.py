"""``gf.measure``: measurements: statistics and gradient norms of any probed
model or the built-in MLP, Jacobians (local per tap, input-output at every
depth), weight spectra, the RNN's gradients through time, the loss's
curvature (Hessian top eigenvalues, per leaf, preconditioned, the SLQ
spectrum) and the gradient noise scale."""

from gradflow_jax.measure._hessian import (BlockSharpness, HessianTop, block_sharpness,
                                           hessian_top, hvp)
from gradflow_jax.measure._jacobians import (jacobian_spectra, layer_jacobian_norms,
                                             product_bound, weight_spectral_norms)
from gradflow_jax.measure._model_stats import infer_activations, model_flow_stats
from gradflow_jax.measure._noise_scale import (NoiseScale, WindowNoiseScale,
                                               noise_scale_from_microbatches,
                                               noise_scale_from_per_example,
                                               noise_scale_over_window)
from gradflow_jax.measure._spectrum import HessianSpectrum, hessian_spectrum, spectral_density
from gradflow_jax.measure._stability import (adam_preconditioner, adam_stability_threshold,
                                             preconditioned_sharpness, stability_threshold)
from gradflow_jax.measure._stats import activation_stats, flow_stats, gradient_stats
from gradflow_jax.measure._tap_jacobians import tap_jacobian_norms
from gradflow_jax.measure._through_time import rnn_through_time

__all__ = ("BlockSharpness", "HessianSpectrum", "HessianTop", "NoiseScale", "WindowNoiseScale",
           "activation_stats", "adam_preconditioner", "adam_stability_threshold",
           "block_sharpness", "flow_stats", "gradient_stats", "hessian_spectrum", "hessian_top",
           "hvp", "infer_activations", "jacobian_spectra", "layer_jacobian_norms",
           "model_flow_stats", "noise_scale_from_microbatches", "noise_scale_from_per_example",
           "noise_scale_over_window", "preconditioned_sharpness", "product_bound",
           "rnn_through_time", "spectral_density", "stability_threshold", "tap_jacobian_norms",
           "weight_spectral_norms")
