"""The ops through JAX on the GPU over a sweep of shapes, for compute-sanitizer.

Every case runs the forward, the fused residual and the gradients (x, residual, weight)
of both, and checks the results (rows subsampled for the largest cases) against a float64
reference: a sanitizer run that passes also computed the right numbers. The shapes reach
every kernel path: one row, odd hidden sizes (scalar path), short rows packed several per
CTA, register rows with 1/2/4 chunks, clusters (16K-128K), streaming (262144+), zero rows,
and rows x hidden past 2^31 elements (64-bit indexing).

  compute-sanitizer --tool memcheck --kernel-name regex:'rms_norm|sum_dweight' \
      python benchmarks/sanitize_jax.py [--largest]

Prints one line per case and `ALL OK` at the end.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_rmsnorm

SHAPES = [(1, 4096), (1, 1), (3, 127), (7, 4097), (0, 4096), (1000, 128), (333, 1000),
          (64, 8192), (17, 16384), (9, 65536), (3, 131072), (2, 262144), (2, 262147)]
DTYPES = [(jnp.bfloat16, jnp.float32), (jnp.float16, None), (jnp.float32, jnp.bfloat16)]
# rows x hidden > 2^31: the largest we run (4.3 GB per bfloat16 array).
LARGEST = (524296, 4096)


def ops(x, r, w):
  y, new_residual = jax_rmsnorm.rms_norm_residual(x, r, w)
  return jax_rmsnorm.rms_norm(x, w), y, new_residual


def norm64(s, w, eps=1e-6):
  """y and rstd of rows s, float64 (w None: no weight)."""
  rstd = 1.0 / np.sqrt(np.mean(s * s, -1, keepdims=True) + eps)
  return s * rstd * (1.0 if w is None else w), rstd


def norm_grad64(s, rstd, g, w):
  """dx and dweight of rows s for the cotangent g, float64."""
  n = s * rstd
  gw = g * (1.0 if w is None else w)
  dx = rstd * (gw - n * np.mean(gw * n, -1, keepdims=True))
  return dx, np.sum(g * n, axis=tuple(range(s.ndim - 1)))


def reference(x, r, w, dy):
  """Forward outputs and gradients of ops() in float64 (numpy), the kernels' semantics."""
  xf, rf = x.astype(np.float64), r.astype(np.float64)
  new_r = (xf + rf).astype(x.dtype).astype(np.float64)
  y1, rstd1 = norm64(xf, w)
  y2, rstd2 = norm64(new_r, w)
  g1, g2, g3 = (d.astype(np.float64) for d in dy)
  dx1, dw1 = norm_grad64(xf, rstd1, g1, w)
  ds, dw2 = norm_grad64(new_r, rstd2, g2, w)
  ds = ds + g3
  return (y1, y2, new_r), (dx1 + ds, ds, dw1 + dw2)


def check(name, got, want, dtype):
  got = np.asarray(got, np.float64)
  assert np.all(np.isfinite(got)), f"{name}: non-finite values"
  # Rounding of the output (half an ulp of the largest value) plus float32 sums.
  tol = {np.dtype(np.float32): 1e-4, np.dtype(jnp.bfloat16): 2.0 ** -7,
         np.dtype(np.float16): 2.0 ** -10}[np.dtype(dtype)]
  scale = max(float(np.max(np.abs(want))) if want.size else 1.0, 1.0)
  err = float(np.max(np.abs(got - want))) if got.size else 0.0
  assert err <= tol * scale, f"{name}: max |error| {err:.3g} > {tol * scale:.3g}"
  return err


def run_largest(key, parts=("forward", "gradients"), sample_rows=64):
  """LARGEST in bfloat16, one op at a time (x, residual and one cotangent stay on the
  device: 13 GB; under memcheck each buffer is its own cudaMalloc, so we free as we go):
  `parts`: the forwards (plain, float32-y HF order, residual) and/or the gradients of the
  plain and residual ops (one sanitizer run of both can outlast a call). Rows checked: the
  first and last `sample_rows`; dweight (all rows) against XLA's float32 sum."""
  shape, eps = LARGEST, 1e-6
  kx, kr, kd, kw = jax.random.split(key, 4)
  x, r, dy = (jax.random.normal(k, shape, jnp.bfloat16) for k in (kx, kr, kd))
  w = jax.random.normal(kw, shape[-1:], jnp.float32)
  rows = np.r_[0:sample_rows, shape[0] - sample_rows:shape[0]]
  host = lambda a: np.asarray(a[rows].astype(jnp.float32)).astype(np.float64)
  w64 = np.asarray(w, np.float64)
  x64, r64, dy64 = host(x), host(r), host(dy)
  s64 = (x64 + r64).astype(jnp.bfloat16).astype(np.float64)

  def y_and_dx(s):
    y, rstd = norm64(s, w64, eps)
    return y, norm_grad64(s, rstd, dy64, w64)[0]

  (y_x, dx_x), (y_s, dx_s) = y_and_dx(x64), y_and_dx(s64)

  @jax.jit
  def dweight_xla(s, dy):
    sf = s.astype(jnp.float32)
    rstd = jax.lax.rsqrt(jnp.mean(sf * sf, -1, keepdims=True) + eps)
    return jnp.sum(dy.astype(jnp.float32) * sf * rstd, axis=0)

  def show(name, *args):
    print(f"  {name}: max |error| {check(name, *args):.3g}", flush=True)

  def forwards():
    y = jax.jit(jax_rmsnorm.rms_norm)(x, w)
    show("y", host(y), y_x, jnp.bfloat16)
    del y
    # The float32 output in the HF order: an 8.6 GB y past 2^31 elements.
    y = jax.jit(lambda x, w: jax_rmsnorm.rms_norm(x, w, out_dtype=jnp.float32,
                                                  round_normalized=True))(x, w)
    show("y f32 hf", np.asarray(y[rows], np.float64),
         norm64(x64, None, eps)[0].astype(jnp.bfloat16).astype(np.float64) * w64, jnp.bfloat16)
    del y
    y, new_r = jax.jit(jax_rmsnorm.rms_norm_residual)(x, r, w)
    show("y residual", host(y), y_s, jnp.bfloat16)
    show("new_residual", host(new_r), s64, jnp.bfloat16)

  def gradients():
    dx, dw = jax.jit(lambda x, w, dy: jax.vjp(jax_rmsnorm.rms_norm, x, w)[1](dy))(x, w, dy)
    show("dx", host(dx), dx_x, jnp.bfloat16)
    show("dweight", np.asarray(dw), np.asarray(dweight_xla(x, dy), np.float64), np.float32)
    del dx
    new_r = jax.jit(lambda x, r: (x + r).astype(r.dtype))(x, r)
    dw_want = np.asarray(dweight_xla(new_r, dy), np.float64)
    del new_r
    # dy for both y and new_residual: ds = (the norm's gradient) + dy, to x and residual.
    residual_vjp = lambda x, r, w, dy: jax.vjp(jax_rmsnorm.rms_norm_residual, x, r, w)[1]((dy, dy))
    dx, dr, dw = jax.jit(residual_vjp)(x, r, w, dy)
    show("dx residual", host(dx), dx_s + dy64, jnp.bfloat16)
    show("dresidual", host(dr), dx_s + dy64, jnp.bfloat16)
    show("dweight residual", np.asarray(dw), dw_want, np.float32)

  if "forward" in parts:
    forwards()
  if "gradients" in parts:
    gradients()


def run(shape, x_dtype, w_dtype, key):
  """One shape and dtype pairing, every row checked."""
  keys = jax.random.split(key, 6)
  x, r, *dy = (jax.random.normal(k, shape, jnp.float32).astype(x_dtype) for k in keys[:5])
  w = None if w_dtype is None else jax.random.normal(keys[5], shape[-1:], jnp.float32).astype(w_dtype)
  host = lambda a: np.asarray(a.astype(jnp.float32)).astype(np.float64)
  w64 = None if w is None else np.asarray(w.astype(jnp.float32)).astype(np.float64)
  (y1, y2, new_r), (dx, dr, dw) = reference(np.asarray(x), np.asarray(r), w64, [host(d) for d in dy])
  outs = jax.jit(ops)(x, r, w)
  for label, got, want in (("y", outs[0], y1), ("y residual", outs[1], y2), ("new_residual", outs[2], new_r)):
    check(label, host(got), want, x_dtype)
  # The gradients with the cotangents given directly.
  grads = jax.jit(lambda x, r, w, dy: jax.vjp(ops, x, r, w)[1](tuple(dy)))(x, r, w, dy)
  for label, got, want in (("dx", grads[0], dx), ("dresidual", grads[1], dr)):
    check(label, host(got), want, x_dtype)
  if w is not None:
    check("dweight", np.asarray(grads[2].astype(jnp.float32)), dw, w_dtype)
  if x_dtype != jnp.float32:
    run_options(x, r, w, w64, x_dtype)


def run_options(x, r, w, w64, x_dtype):
  """The forward kernels' other outputs: a float32 y from bf16/f16 x, and the HF order
  (the normalized x rounded to x's dtype before the weight), plain and fused."""
  f32, hf = dict(out_dtype=jnp.float32), dict(out_dtype=jnp.float32, round_normalized=True)
  outs = jax.jit(lambda x, r, w: (
      jax_rmsnorm.rms_norm(x, w, **f32), jax_rmsnorm.rms_norm(x, w, **hf),
      jax_rmsnorm.rms_norm_residual(x, r, w, **f32)[0],
      jax_rmsnorm.rms_norm_residual(x, r, w, **hf)[0]))(x, r, w)
  scale = 1.0 if w64 is None else w64
  for label, s, got_f32, got_hf in (("", np.asarray(x, np.float64), outs[0], outs[1]),
                                    (" residual", (np.asarray(x, np.float64) + np.asarray(r, np.float64))
                                     .astype(x_dtype).astype(np.float64), outs[2], outs[3])):
    normalized = norm64(s, None)[0]
    check("y f32" + label, np.asarray(got_f32), normalized * scale, jnp.float32)
    # One rounding of the normalized x to x's dtype: a tie may round either way, so x's
    # dtype's tolerance.
    check("y hf" + label, np.asarray(got_hf), normalized.astype(x_dtype).astype(np.float64) * scale,
          x_dtype)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--largest", action="store_true", help=f"also rows x hidden = {LARGEST} (bf16)")
  parser.add_argument("--only-largest", action="store_true", help="skip the sweep")
  parser.add_argument("--largest-parts", default="forward,gradients",
                      help="of the largest case: forward, gradients or both (comma-separated)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  key = jax.random.key(args.seed)
  print("devices:", jax.devices(), flush=True)
  for shape in [] if args.only_largest else SHAPES:
    for x_dtype, w_dtype in DTYPES:
      key, sub = jax.random.split(key)
      run(shape, x_dtype, w_dtype, sub)
    print(f"ok {shape[0]} x {shape[1]}: forward, residual, gradients; bf16/f16/f32; "
          "float32 y and HF order from bf16/f16", flush=True)
  if args.largest or args.only_largest:
    parts = tuple(args.largest_parts.split(","))
    run_largest(key, parts)
    print(f"ok {LARGEST[0]} x {LARGEST[1]} bf16 ({LARGEST[0] * LARGEST[1]:,} elements): "
          f"{' and '.join(parts)} (forward: also float32 y in the HF order, and residual; "
          "first and last 64 rows checked)", flush=True)
  print("ALL OK")


if __name__ == "__main__":
  sys.exit(main())
