"""Pure-jnp RMSNorm with exactly the semantics of the kernels.

It is the ground truth of the tests and a fallback anyone can read:
statistics and scaling in float32, one rounding at the end to ``x.dtype``.
"""

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
  xf = x.astype(jnp.float32)
  y = xf * lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  if round_normalized:
    y = y.astype(x.dtype).astype(jnp.float32)
  if weight is not None:
    y = y * weight.astype(jnp.float32)
  return y.astype(out_dtype)


def rms_norm_residual(x, residual, weight=None, *, eps=1e-6, out_dtype=None,
                      round_normalized=False):
  """``new_residual = x + residual`` (rounded), ``y = rms_norm(new_residual)``."""
  x = _checks.check_x(x)
  residual = _checks.check_residual(residual, x)
  new_residual = (x + residual).astype(residual.dtype)
  y = rms_norm(new_residual, weight, eps=eps, out_dtype=out_dtype, round_normalized=round_normalized)
  return y, new_residual
