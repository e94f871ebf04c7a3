"""The result types the library's functions return (NamedTuples of arrays):
import them from here for annotations and isinstance checks."""

from gradflow_jax._analyze import ModelAnalysis
from gradflow_jax._diagnose import Finding
from gradflow_jax._jacobians import JacobianSpectra
from gradflow_jax._model_stats import ModelFlowStats
from gradflow_jax._stats import ActivationStats, FlowStats, GradientStats
from gradflow_jax._tap_jacobians import TapJacobians

__all__ = ("ActivationStats", "Finding", "FlowStats", "GradientStats", "JacobianSpectra",
           "ModelAnalysis", "ModelFlowStats", "TapJacobians")
