"""Runs the residual-MLP depth study of test_studies on every visible device
(the test starts it with 4 host CPU devices) and prints its numbers as JSON."""

import json
import os
import sys

import jax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import residual_mlp  # noqa: E402

import gradflow_jax as gf  # noqa: E402

settings = gf.studies.DepthStudySettings(**json.loads(sys.argv[1]))
result = gf.depth_study(residual_mlp.make_unscaled, settings)
print(json.dumps({"devices": len(jax.devices()), "depths": [
    {k: d[k].tolist() for k in ("spectral_norm", "mean_sq_singular_value", "tap_std",
                                 "tap_grad_norm", "tap_mean_sq_singular_value")}
    for d in result["depths"]]}))
