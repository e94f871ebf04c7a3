"""The monitored step on a (data=2, model=2) mesh of 4 host CPU devices (in a
subprocess: the device count is fixed when JAX starts) against one device."""

import json
import os
import subprocess
import sys


def test_sharded_monitored_step_equals_one_device_and_gathers_nothing_more():
  """Kernels sharded over "model", biases and the batch over "data": every
  statistic equals the single-device value to 1e-5 (relative to what was
  summed), histogram counts are identical, and the compiled step has exactly
  the all-gathers of the plain training step (the statistics reduce each
  shard where it lives; before, stacking reshapes gathered every tap)."""
  script = os.path.join(os.path.dirname(__file__), "_sharded_watch.py")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  run = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert max(result["errors"].values()) < 1e-5, result["errors"]
  assert result["histogram_count_moves"] == 0
  assert result["monitored_gathers"] == result["plain_gathers"]
  assert set(result["params_sharded"]) == {"P('data',)", "P(None, 'model')"}
  assert len(result["flow_names"]) == 7
