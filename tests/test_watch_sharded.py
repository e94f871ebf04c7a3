"""The monitored step on a (data=2, model=2) mesh of 4 host CPU devices (in a
subprocess: the device count is fixed when JAX starts) against one device."""

import json
import os

from helpers import run_on_host_devices


def test_sharded_monitored_step_equals_one_device_and_gathers_nothing_more():
  """Kernels sharded over "model", biases and the batch over "data": every
  statistic equals the single-device value to 1e-5 (relative to what was
  summed), and so do the norms, optimizer and spectra tiers; histogram counts are
  identical, and the compiled step has exactly
  the all-gathers of the plain training step (the statistics reduce each
  shard where it lives; before, stacking reshapes gathered every tap)."""
  out = run_on_host_devices([os.path.join(os.path.dirname(__file__), "_sharded_watch.py")])
  result = json.loads(out.strip().splitlines()[-1])
  assert max(result["errors"].values()) < 1e-5, result["errors"]
  assert {"recorder", "optimizer", "spectra"} <= set(result["errors"])
  assert result["histogram_count_moves"] == 0
  assert result["monitored_gathers"] == result["plain_gathers"]
  assert set(result["params_sharded"]) == {"P('data',)", "P(None, 'model')"}
  assert len(result["flow_names"]) == 7
