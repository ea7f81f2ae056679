"""CUDA graphs (GPU only): XLA captures our custom calls in its command buffers, and
replays stay right. The checks are in cuda_graph_program.py (a fresh interpreter, so
that XLA's flags are the defaults a user gets, plus a dump directory to read the thunk
sequences from)."""

import os
import pathlib
import secrets
import subprocess
import sys
import tempfile

import pytest

from conftest import GPUS

PROGRAM = pathlib.Path(__file__).with_name("cuda_graph_program.py")


@pytest.mark.skipif(not GPUS, reason="no GPU visible to JAX")
def test_custom_calls_captured_in_command_buffers_gpu():
  seed = secrets.randbelow(2**31)
  env = dict(os.environ)
  for name in ("JAX_RMSNORM_DISABLE", "JAX_PLATFORMS"):
    env.pop(name, None)
  with tempfile.TemporaryDirectory() as dump_dir:
    env["XLA_FLAGS"] = f"--xla_dump_to={dump_dir}"  # and XLA's defaults otherwise
    done = subprocess.run([sys.executable, "-P", str(PROGRAM), str(seed), dump_dir], env=env,
                          capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, f"seed {seed}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
  assert sum(line.startswith("ok ") for line in done.stdout.splitlines()) == 6, done.stdout  # 3 shapes x 2
  print(done.stdout)
