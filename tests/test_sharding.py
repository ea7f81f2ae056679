"""Sharded inputs on 8 host CPU devices (a fresh interpreter: the device count is fixed
when jax starts). The checks themselves are in sharding_program.py."""

import os
import pathlib
import secrets
import subprocess
import sys

PROGRAM = pathlib.Path(__file__).with_name("sharding_program.py")


def test_sharded_inputs_on_eight_cpu_devices():
  seed = secrets.randbelow(2**31)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  env.pop("JAX_RMSNORM_DISABLE", None)
  done = subprocess.run([sys.executable, "-P", str(PROGRAM), str(seed)], env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, f"seed {seed}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
  lines = done.stdout.splitlines()
  assert sum(line.startswith("ok ") for line in lines) == 26, done.stdout


def test_a_failing_partitioner_falls_back_to_gathering():
  """XLA aborts the process when a partitioner raises; ours warns and gathers instead."""
  import pytest
  from jax_rmsnorm import _partition

  def partition(platform, shapes, *, whole=False):
    if not whole:
      raise ValueError("unforeseen sharding")
    return platform, shapes, "gathered"

  with pytest.warns(RuntimeWarning, match="unforeseen sharding"):
    assert _partition._never_raising(partition)("cpu", [1]) == ("cpu", [1], "gathered")
