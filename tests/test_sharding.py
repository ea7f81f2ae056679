"""Sharded inputs on 8 and on 2 host CPU devices (a fresh interpreter: the device count is
fixed when jax starts), and on the GPUs when there are 2, 4 or 8. The checks themselves are
in sharding_program.py."""

import os
import pathlib
import secrets
import subprocess
import sys

import jax
import pytest

PROGRAM = pathlib.Path(__file__).with_name("sharding_program.py")


def run_program(env):
  seed = secrets.randbelow(2**31)
  env = dict(env)
  env.pop("JAX_RMSNORM_DISABLE", None)
  done = subprocess.run([sys.executable, "-P", str(PROGRAM), str(seed)], env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, f"seed {seed}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
  lines = done.stdout.splitlines()
  assert sum(line.startswith("ok ") for line in lines) == 27, done.stdout


@pytest.mark.parametrize("count", [8, 2])
def test_sharded_inputs_on_cpu_devices(count):
  run_program(dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
                   JAX_PLATFORMS="cpu"))


def test_sharded_inputs_on_gpus():
  """Issue 8's run: the same checks on the GPUs this process sees (NCCL, NVLink multicast
  off)."""
  gpus = [d for d in jax.devices() if d.platform == "gpu"]
  if len(gpus) not in (2, 4, 8):
    pytest.skip(f"needs 2, 4 or 8 GPUs, sees {len(gpus)}")
  run_program(dict(os.environ, NCCL_NVLS_ENABLE="0", XLA_PYTHON_CLIENT_PREALLOCATE="false"))


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
