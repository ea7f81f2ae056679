"""rms_norm and rms_norm_residual against a float64 reference, on every device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_rmsnorm
from conftest import (assert_close, dtype_grid, on_device, poison, random_array, reference64,
                      shape_grid)


def run_forward(device, rng, shape, x_dtype, w_dtype, residual, eps=1e-6, fn_wrapper=jax.jit):
  """Runs one op on `device` and checks it (y, and new_residual bit for bit)."""
  x = random_array(rng, shape, x_dtype, scale=2.0, mean=0.5)
  r = random_array(rng, shape, x_dtype) if residual else None
  w = None if w_dtype is None else random_array(rng, shape[-1:], w_dtype, scale=0.5, mean=1.0)
  y_ref, new_res_ref = reference64(x, r, w, eps)

  xd, rd, wd = on_device(device, x, r, w)
  poison(device, 2 * x.nbytes)
  if residual:
    y, new_res = fn_wrapper(lambda a, b, c: jax_rmsnorm.rms_norm_residual(a, b, c, eps=eps))(xd, rd, wd)
    assert new_res.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(new_res).view(np.uint8), new_res_ref.view(np.uint8),
                                  err_msg=f"new_residual (seed {rng.seed})")
  else:
    y = fn_wrapper(lambda a, c: jax_rmsnorm.rms_norm(a, c, eps=eps))(xd, wd)
  assert y.devices() == {device}
  assert_close(y, y_ref, x_dtype, seed=rng.seed)


@shape_grid
def test_shapes(device, rng, hidden, leading, x_dtype, w_dtype, residual):
  run_forward(device, rng, leading + (hidden,), x_dtype, w_dtype, residual)


# Decode rows split over several CTAs, beside the one-CTA-per-row shapes: (16, 8192) 4 parts
# of two accesses a thread, (64, 2048) 2 parts; the CTA sizes the split kernel is compiled for,
# 64 (40 x 512 bf16), 128 (8 x 1024 bf16, 40 x 512 f32), 256 with one thread past the row's 255
# accesses (5 x 2040 bf16) and 512 with 1, 2 and 4 accesses (bf16 4096, bf16 8192, f32 16 x 8192);
# the CTA size taken at run time on the scalar path (6 x 1023).
@dtype_grid([(2, 3, 4096), (5, 4097), (33, 128), (4, 1), (3, 24576), (16, 8192), (64, 2048),
             (40, 512), (8, 1024), (5, 2040), (6, 1023)])
def test_dtype_combinations(device, rng, shape, x_dtype, w_dtype, residual):
  run_forward(device, rng, shape, x_dtype, w_dtype, residual)


# Long rows on the GPU take a persistent kernel: each cluster of CTAs walks rows, the next
# ones staged in a ring of shared memory. With more rows than clusters x stages, every slot
# of the ring is refilled; the row counts here reach several steps per cluster.
@pytest.mark.parametrize("shape,x_dtype,w_dtype", [
    ((300, 65536), jnp.bfloat16, jnp.float32), ((70, 131072), jnp.bfloat16, jnp.bfloat16),
    ((40, 262144), jnp.float16, None), ((100, 32768), jnp.float32, jnp.float32),
    ((2, 150, 65528), jnp.bfloat16, jnp.float32)], ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_long_rows_many_per_cluster(device, rng, shape, x_dtype, w_dtype, residual):
  run_forward(device, rng, shape, x_dtype, w_dtype, residual)


# (batch, rows, hidden): long rows (the long-row kernel then reads the weight from global
# memory instead of its shared copy) and decode rows split over CTAs (each CTA finds its
# weight row by a 32-bit division: 5 rows a weight row, 8, and 1).
@pytest.mark.parametrize("batch,rows,hidden", [(3, 40, 65536), (3, 40, 131072), (3, 5, 4096), (4, 8, 2048),
                                               (8, 1, 4096)], ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_weight_per_batch(device, rng, batch, rows, hidden, residual):
  """A vmapped weight gives each group of rows its own weight row."""
  x = random_array(rng, (batch, rows, hidden), jnp.bfloat16, scale=2.0, mean=0.5)
  r = random_array(rng, (batch, rows, hidden), jnp.bfloat16)
  w = random_array(rng, (batch, hidden), jnp.float32, scale=0.5, mean=1.0)
  poison(device, 2 * x.nbytes)
  if residual:
    fn = jax.vmap(jax_rmsnorm.rms_norm_residual, in_axes=(0, 0, 0))
    y, _ = jax.jit(fn)(*on_device(device, x, r, w))
  else:
    y = jax.jit(jax.vmap(jax_rmsnorm.rms_norm, in_axes=(0, 0)))(*on_device(device, x, w))
  want = np.stack([reference64(x[i], r[i] if residual else None, w[i])[0] for i in range(batch)])
  assert_close(y, want, jnp.bfloat16, seed=rng.seed)


@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.1, 3])
def test_eps(device, rng, eps):
  run_forward(device, rng, (9, 512), jnp.float32, jnp.float32, False, eps=eps)


def test_eager_matches_jit_bitwise(device, rng):
  x, w = on_device(device, random_array(rng, (6, 1000), jnp.bfloat16), random_array(rng, (1000,), jnp.float32))
  with jax.default_device(device):
    eager = jax_rmsnorm.rms_norm(x, w)
  jitted = jax.jit(jax_rmsnorm.rms_norm)(x, w)
  np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted))


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_zero_rows_and_nonfinite_rows_stay_local(device, rng, residual):
  """A row of zeros normalizes to zeros; NaN or Inf in one row changes only that row."""
  x = random_array(rng, (8, 300), jnp.float32)
  r = random_array(rng, (8, 300), jnp.float32) if residual else None
  w = random_array(rng, (300,), jnp.float32)
  fn = jax.jit(jax_rmsnorm.rms_norm_residual if residual else jax_rmsnorm.rms_norm)
  call = (lambda a: fn(a, *on_device(device, r, w))[0]) if residual else (lambda a: fn(a, *on_device(device, w)))
  clean = np.asarray(call(*on_device(device, x)))
  bad = x.copy()
  bad[1, 7] = np.nan
  bad[4, 0] = np.inf
  bad[6, :] = 0 if r is None else -r[6, :]  # a row whose (new) values are all zero
  out = np.asarray(call(*on_device(device, bad)))
  y_ref, _ = reference64(bad, r, w)
  assert_close(out, y_ref, jnp.float32, seed=rng.seed)
  assert np.isnan(out[1]).all()
  np.testing.assert_array_equal(out[6], np.zeros(300, np.float32))
  untouched = [0, 2, 3, 5, 7]
  np.testing.assert_array_equal(out[untouched], clean[untouched])


def test_lowers_to_the_ffi_call():
  """The jitted ops are one FFI custom call each, not a jnp fallback."""
  x = jnp.ones((4, 256), jnp.bfloat16)
  w = jnp.ones((256,), jnp.float32)
  for fn, args in [(jax_rmsnorm.rms_norm, (x, w)), (jax_rmsnorm.rms_norm_residual, (x, x, w))]:
    text = jax.jit(fn).lower(*args).as_text()
    assert text.count("stablehlo.custom_call @jax_rmsnorm_fwd_v1") == 1, text
    assert "stablehlo.reduce" not in text and "rsqrt" not in text, text


def test_checker_catches_wrong_results(rng):
  """The comparison helper itself fails on a wrong element, a NaN and a wrong dtype."""
  ref = rng.standard_normal((4, 64))
  good = ref.astype(np.float32)
  assert_close(good, ref, np.float32)
  wrong = good.copy()
  wrong[2, 5] += 0.01
  nan = good.copy()
  nan[1, 1] = np.nan
  for bad in (wrong, nan):
    with pytest.raises(AssertionError):
      assert_close(bad, ref, np.float32)
  with pytest.raises(AssertionError):
    assert_close(good.astype(np.float16), ref, np.float32)
