"""Shared test machinery: devices, a float64 reference, tolerances, inputs, poisoning.

Every test that takes the `device` fixture runs on the CPU and, when JAX sees a
GPU, again on the GPU, with the same assertions.
"""

import secrets

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jax_rmsnorm  # noqa: F401  (registers the FFI targets)

# (rtol, atol) of y against the float64 reference, per output dtype. y is rounded
# once to its dtype (half an ulp: 2^-9 bf16, 2^-12 f16); the rest is float32
# accumulation and rsqrt.
TOLERANCE = {
    np.dtype(np.float32): (2e-5, 2e-6),
    np.dtype(ml_dtypes.bfloat16): (8e-3, 1e-5),
    np.dtype(np.float16): (1e-3, 1e-5),
}

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
WEIGHT_DTYPES = [None] + DTYPES
HIDDEN = [1, 3, 8, 127, 128, 1000, 4096, 4097, 8192, 65536, 262144, 262147]
LEADING = [(), (0,), (7,), (2, 3, 5)]

_with_residual = pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])


def _dtype_id(dtype):
  return "none" if dtype is None else jnp.dtype(dtype).name


def shape_grid(test):
  """Every hidden size x leading dims, three x/weight dtype pairings, with and without
  the residual: test(device, rng, hidden, leading, x_dtype, w_dtype, residual)."""
  test = pytest.mark.parametrize("hidden", HIDDEN)(test)
  test = pytest.mark.parametrize("leading", LEADING, ids=str)(test)
  test = pytest.mark.parametrize(
      "x_dtype,w_dtype", [(jnp.bfloat16, jnp.float32), (jnp.float16, None), (jnp.float32, jnp.bfloat16)],
      ids=["bf16-f32", "f16-none", "f32-bf16"])(test)
  return _with_residual(test)


def dtype_grid(shapes):
  """Every x dtype x weight dtype (or none), with and without the residual, over `shapes`:
  test(device, rng, shape, x_dtype, w_dtype, residual)."""
  def decorate(test):
    test = pytest.mark.parametrize("shape", shapes, ids=str)(test)
    test = pytest.mark.parametrize("x_dtype", DTYPES, ids=_dtype_id)(test)
    test = pytest.mark.parametrize("w_dtype", WEIGHT_DTYPES, ids=_dtype_id)(test)
    return _with_residual(test)
  return decorate


def _gpu_devices():
  try:
    return jax.devices("gpu")
  except RuntimeError:
    return []


GPUS = _gpu_devices()


@pytest.fixture(params=["cpu", "gpu"])
def device(request):
  if request.param == "gpu":
    if not GPUS:
      pytest.skip("no GPU visible to JAX")
    return GPUS[0]
  return jax.devices("cpu")[0]


class SeededRng:
  """A numpy Generator that remembers its seed, for failure messages."""

  def __init__(self, seed):
    self.seed = seed
    self._generator = np.random.default_rng(seed)

  def __getattr__(self, name):
    return getattr(self._generator, name)


@pytest.fixture
def rng():
  """A fresh generator per test; its seed is in the failure message."""
  return SeededRng(secrets.randbits(32))


def random_array(rng, shape, dtype, scale=1.0, mean=0.0):
  values = rng.standard_normal(shape) * scale + mean
  return np.asarray(values).astype(jnp.dtype(dtype))


def reference64(x, residual=None, weight=None, eps=1e-6):
  """(y, new_residual) computed in float64 from the (rounded) inputs."""
  x = np.asarray(x)
  s = x.astype(np.float64)
  new_residual = None
  if residual is not None:
    new_residual = (s + np.asarray(residual).astype(np.float64)).astype(x.dtype)
    s = new_residual.astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
    mean_sq = np.mean(s * s, axis=-1, keepdims=True) if s.shape[-1] else np.zeros(s.shape[:-1] + (1,))
    y = s / np.sqrt(mean_sq + eps)
    if weight is not None:
      y = y * np.asarray(weight).astype(np.float64)
  return y, new_residual


def assert_close(out, ref, dtype, what="y", seed=None, atol=None):
  """out (any dtype) against a float64 reference; NaN only where the reference has NaN.
  `atol` overrides the dtype's absolute tolerance (gradients scale it to their size)."""
  out = np.asarray(out)
  assert out.dtype == np.dtype(dtype), f"{what}: dtype {out.dtype}, expected {np.dtype(dtype)}"
  assert out.shape == ref.shape, f"{what}: shape {out.shape}, expected {ref.shape}"
  out64 = out.astype(np.float64)
  ref_nan = np.isnan(ref)
  np.testing.assert_array_equal(np.isnan(out64), ref_nan, err_msg=f"{what}: NaN positions (seed {seed})")
  rtol, default_atol = TOLERANCE[np.dtype(dtype)]
  # Rounding into the dtype's subnormal range errs by up to half its smallest step.
  atol = (default_atol if atol is None else atol) + float(ml_dtypes.finfo(dtype).smallest_subnormal)
  ok = ref_nan | (out64 == ref) | (np.abs(out64 - ref) <= atol + rtol * np.abs(ref))
  if not ok.all():
    bad = np.argwhere(~ok)[:5]
    raise AssertionError(
        f"{what}: {int((~ok).sum())} of {ok.size} elements off (seed {seed}); first at "
        f"{bad.tolist()}: got {out64[tuple(bad[0])]}, expected {ref[tuple(bad[0])]}")


def poison(device, nbytes):
  """Fills freed device memory with NaN so that the next allocations likely reuse it:
  an element the kernel fails to write then shows up as NaN."""
  if nbytes:
    filler = jax.device_put(np.full(max(nbytes // 4, 1), np.nan, np.float32), device)
    filler.block_until_ready()
    del filler


def on_device(device, *arrays):
  return [None if a is None else jax.device_put(a, device) for a in arrays]


def reference_grads64(x, residual, weight, ct_y, ct_new_residual=None, eps=1e-6):
  """(ds, dweight) from jax.grad of the op in float64, at the (rounded) normalized input s.
  ds is the gradient of both x and residual."""
  s = np.asarray(x)
  if residual is not None:
    s = (s.astype(np.float64) + np.asarray(residual).astype(np.float64)).astype(s.dtype)
  with jax.enable_x64(True):
    s64 = jnp.asarray(np.asarray(s).astype(np.float64))
    ct_y64 = jnp.asarray(np.asarray(ct_y).astype(np.float64))

    def loss(s, w):
      y = s * jax.lax.rsqrt(jnp.mean(s * s, axis=-1, keepdims=True) + eps)
      if w is not None:
        y = y * w
      total = jnp.sum(y * ct_y64)
      if ct_new_residual is not None:
        total = total + jnp.sum(s * jnp.asarray(np.asarray(ct_new_residual).astype(np.float64)))
      return total

    w64 = None if weight is None else jnp.asarray(np.asarray(weight).astype(np.float64))
    ds, dw = jax.grad(loss, argnums=(0, 1))(s64, w64) if weight is not None else (jax.grad(loss)(s64, None), None)
    # The sizes of the terms that cancel in ds = rstd * (g - n * mean(g * n)) and that
    # are summed into dweight = sum(dy * n): float32 arithmetic errs relative to those.
    rstd = jax.lax.rsqrt(jnp.mean(s64 * s64, axis=-1, keepdims=True) + eps)
    g = ct_y64 * (w64 if w64 is not None else 1.0)
    ds_scale = float(jnp.max(jnp.abs(g) * rstd)) if s64.size else 0.0
    dw_terms = jnp.abs(ct_y64 * s64 * rstd).reshape(-1, s64.shape[-1]).sum(axis=0)
    dw_scale = float(jnp.max(dw_terms)) if s64.size else 0.0
    return (np.asarray(ds), None if dw is None else np.asarray(dw)), (ds_scale, dw_scale)


def grad_atol(ref, dtype, term_scale):
  """Gradients cancel (g - n * mean(g * n)) and sum many terms: their absolute error
  scales with the size of the result (final rounding) and of the terms (float32 math)."""
  rtol, _ = TOLERANCE[np.dtype(dtype)]
  return rtol * 0.1 * (float(np.max(np.abs(ref))) if ref.size else 0.0) + 1e-6 * term_scale + 1e-30
