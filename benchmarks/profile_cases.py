"""Runs a few ops once each (after a warm-up), for a profiler such as ncu to attach to.

    python benchmarks/profile_cases.py forward:16384x4096 backward:262144x128:bfloat16

Each case is op:ROWSxHIDDEN[:dtype], op one of forward, residual, backward, or
xla-forward / xla-residual (the jitted jnp reference, to profile XLA's kernels beside ours).
gpu_session.sh runs it under `ncu` when NCU_CASES is set.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_rmsnorm
from jax_rmsnorm import primitives


def run_case(spec):
  op, shape, *rest = spec.split(":")
  rows, hidden = (int(v) for v in shape.split("x"))
  dtype = jnp.dtype(rest[0] if rest else "bfloat16")
  rng = np.random.default_rng(0)
  x, other = (jnp.asarray(rng.standard_normal((rows, hidden)).astype(dtype)) for _ in range(2))
  w = jnp.asarray(rng.standard_normal(hidden).astype(np.float32))
  if op == "xla-forward":
    fn, args = jax.jit(jax_rmsnorm.reference.rms_norm), (x, w)
  elif op == "xla-residual":
    fn, args = jax.jit(jax_rmsnorm.reference.rms_norm_residual), (x, other, w)
  elif op == "forward":
    fn, args = jax.jit(jax_rmsnorm.rms_norm), (x, w)
  elif op == "residual":
    fn, args = jax.jit(jax_rmsnorm.rms_norm_residual), (x, other, w)
  elif op == "backward":
    _, rstd = primitives.rms_norm_fwd(x, None, w, eps=1e-6, save_rstd=True)
    fn = jax.jit(lambda dy, x, rstd, w: primitives.rms_norm_bwd(dy, x, rstd, w, want_dweight=True))
    args = (other, x, rstd, w)
  else:
    raise SystemExit(f"unknown op in {spec!r}")
  for _ in range(2):  # the first call compiles; a profiler filtering on launch count can skip it
    jax.block_until_ready(fn(*args))
  print(f"ran {spec}", flush=True)


if __name__ == "__main__":
  for case in sys.argv[1:]:
    run_case(case)
