"""Strict test settings: rank promotion raises; our own warnings are errors.

Compiled programs are shared through a JAX compilation cache that lives for
one test session only (created empty by the controller, shared by the xdist
workers, removed at the end): many tests compile identical programs (the
same model in another test, a closure rebuilt per call), and each is then
compiled once per session instead of once per test. Nothing carries over
between sessions.

XLA compiles the tests' programs at backend optimization level 0 and with
XLA:CPU's older loop fusion emitters (``--xla_cpu_use_fusion_emitters=false``:
a depth study of the pre-LN transformer compiles in 10 s instead of 15.5 s);
the programs here are tiny, so compiling is most of a test's time. Neither
changes what is computed beyond float rounding; a test that sets its own
XLA_FLAGS (the sharded subprocesses) keeps them, and
``GRADFLOW_TEST_XLA_OPT=1`` runs the suite with XLA's defaults.
"""

import os
import shutil
import tempfile
import warnings

_CACHE_ENV = "GRADFLOW_TEST_JAX_CACHE"

# XLA:CPU compile time is most of the suite's time (backend compilation 375 s
# of about 700 worker-seconds, measured with jax.monitoring on 2026-12-07)
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")

if os.environ.get("GRADFLOW_TEST_XLA_OPT") != "1" and (
    "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + " ".join(TEST_XLA_FLAGS)).strip()


def pytest_configure(config):
  if not hasattr(config, "workerinput") and _CACHE_ENV not in os.environ:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="gradflow-jax-cache-")
    config._gradflow_cache_owner = True
  _use_session_cache()


def _use_session_cache():
  import jax
  if os.environ.get(_CACHE_ENV):
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
  if getattr(config, "_gradflow_cache_owner", False):
    shutil.rmtree(os.environ.pop(_CACHE_ENV), ignore_errors=True)


import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
_use_session_cache()


@pytest.fixture(autouse=True)
def _strict_warnings():
  with warnings.catch_warnings():
    warnings.filterwarnings("error", module=r"gradflow_jax.*")
    yield
