"""The sharded train step: same numbers on 1 and 2 devices."""

import json
import os
import subprocess
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(devices: int) -> dict:
  out = subprocess.run(
      [sys.executable, "-m", "tests.train.run_train_steps", "--devices", str(devices)],
      cwd=_ROOT, capture_output=True, text=True, timeout=300, check=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_devices_give_the_same_losses_as_one():
  one, two = _run(1), _run(2)
  assert (one["devices"], two["devices"]) == (1, 2)
  # Same global batch, same BatchNorm statistics, same hardest triplets: only
  # the order of floating-point reductions differs.
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=2e-5)
  np.testing.assert_allclose(two["batch_stats_sum"], one["batch_stats_sum"], rtol=1e-5)
  # Training moved: the three losses are not all the same.
  assert np.ptp(one["losses"]) > 1e-3
