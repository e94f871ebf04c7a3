"""The result types the library's functions return (NamedTuples of arrays):
import them from here for annotations and isinstance checks."""

from gradflow_jax.studies._analyze import ModelAnalysis
from gradflow_jax.diagnosis._diagnose import Finding
from gradflow_jax.measure._jacobians import JacobianSpectra
from gradflow_jax.measure._model_stats import ModelFlowStats
from gradflow_jax.measure._rows import ActivationStats
from gradflow_jax.measure._stats import FlowStats, GradientStats
from gradflow_jax.measure._tap_jacobians import TapJacobians

__all__ = ("ActivationStats", "Finding", "FlowStats", "GradientStats", "JacobianSpectra",
           "ModelAnalysis", "ModelFlowStats", "TapJacobians")
