"""Strict test settings: rank promotion raises; our own warnings are errors."""

import warnings

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _strict_warnings():
  with warnings.catch_warnings():
    warnings.filterwarnings("error", module=r"gradflow_jax.*")
    yield
