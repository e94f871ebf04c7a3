"""``gf.studies``: studies over models: the curvature of a model's loss (its
Hessian's spectrum), depth and width studies of a model family with their
laws, sweeps of the built-in MLP across depth, and training runs."""

from gradflow_jax.studies._curvature import curvature_study, CurvatureSettings
from gradflow_jax.studies._depth_study import (depth_study, DepthStudySettings, mean_field_law,
                                               residual_law)
from gradflow_jax.studies._sweep import run_sweep, SweepSettings
from gradflow_jax.studies._train import make_step, train, TrainConfig
from gradflow_jax.studies._width_study import width_study, WidthStudySettings

__all__ = ("curvature_study", "CurvatureSettings", "depth_study", "DepthStudySettings",
           "make_step", "mean_field_law", "residual_law", "run_sweep", "SweepSettings", "train",
           "TrainConfig", "width_study", "WidthStudySettings")
