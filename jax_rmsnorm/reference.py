"""Pure-jnp RMSNorm with exactly the semantics of the kernels.

It is the ground truth of the tests and a fallback anyone can read:
statistics and scaling in float32, one rounding at the end to ``x.dtype``.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jax_rmsnorm import _checks


def rms_norm(x, weight=None, *, eps=1e-6, out_dtype=None, round_normalized=False):
  """``x * rsqrt(mean(x**2, -1) + eps) * weight``, computed in float32, rounded once to
  ``out_dtype`` (x's by default); with ``round_normalized`` (the HF/Llama order) the
  normalized x is rounded to x's dtype before the weight."""
  x = _checks.check_x(x)
  weight = _checks.check_weight(weight, x)
  eps = _checks.check_eps(eps)
  out_dtype = _checks.check_out_dtype(out_dtype, x) or x.dtype
  round_normalized = _checks.check_round_normalized(round_normalized)
  return normalize_rows(x.astype(jnp.float32), x.dtype, weight, eps, out_dtype, round_normalized)


def rms_norm_residual(x, residual, weight=None, *, eps=1e-6, out_dtype=None,
                      round_normalized=False):
  """``new_residual = x + residual`` (rounded), ``y = rms_norm(new_residual)``."""
  x = _checks.check_x(x)
  residual = _checks.check_residual(residual, x)
  weight = _checks.check_weight(weight, x)
  eps = _checks.check_eps(eps)
  out_dtype = _checks.check_out_dtype(out_dtype, x) or x.dtype
  round_normalized = _checks.check_round_normalized(round_normalized)
  # The sum rounded to x's dtype, normalized from that rounded value (as the kernels do).
  s = rounded(x.astype(jnp.float32) + residual.astype(jnp.float32), x.dtype)
  y = normalize_rows(s, x.dtype, weight, eps, out_dtype, round_normalized)
  return y, s.astype(x.dtype)


def normalize_rows(s, dtype, weight, eps, out_dtype, round_normalized):
  """The norm of float32 rows `s` whose values are `dtype`'s: statistics, the HF order's
  rounding to `dtype`, the weight, and one rounding to `out_dtype`."""
  y = s * lax.rsqrt(jnp.mean(s * s, axis=-1, keepdims=True) + eps)
  if round_normalized:
    y = rounded(y, dtype)
  if weight is not None:
    y = y * weight.astype(jnp.float32)
  return y.astype(out_dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def rounded(y, dtype):
  """float32 `y` rounded to `dtype`'s values (to nearest even, as a cast), kept float32.

  Not ``y.astype(dtype).astype(float32)``: XLA on GPU drops such a round trip (its
  default ``xla_allow_excess_precision``), and reduce_precision, which it keeps, flushes
  float16's subnormals, so those are rounded on their own grid. Tangents pass straight
  through, as through the kernels."""
  dtype = jnp.dtype(dtype)
  if dtype.itemsize >= 4:  # float32 (or wider): nothing to round
    return y
  info = jnp.finfo(dtype)
  normal = lax.reduce_precision(y, exponent_bits=info.nexp, mantissa_bits=info.nmant)
  if info.nexp >= 8:  # bfloat16: its subnormals are float32's
    return normal
  # Below the smallest normal, dtype's values are multiples of its smallest subnormal:
  # scaling by a power of two is exact, and jnp.round rounds half to even.
  spacing = float(info.smallest_subnormal)
  subnormal = jnp.round(y / spacing) * spacing
  return jnp.where(jnp.abs(y) < float(info.smallest_normal), subnormal, normal)


@rounded.defjvp
def _rounded_jvp(dtype, primals, tangents):
  return rounded(primals[0], dtype), tangents[0]
