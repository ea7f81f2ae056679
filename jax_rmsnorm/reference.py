"""Pure-jnp RMSNorm with exactly the semantics of the kernels.

It is the ground truth of the tests and a fallback anyone can read:
statistics and scaling in float32, one rounding at the end to ``x.dtype``.
"""

import jax.numpy as jnp
from jax import lax

from jax_rmsnorm import _checks


def rms_norm(x, weight=None, *, eps=1e-6):
  """``x * rsqrt(mean(x**2, -1) + eps) * weight``, computed in float32."""
  x = _checks.check_x(x)
  weight = _checks.check_weight(weight, x)
  eps = _checks.check_eps(eps)
  xf = x.astype(jnp.float32)
  y = xf * lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  if weight is not None:
    y = y * weight.astype(jnp.float32)
  return y.astype(x.dtype)


def rms_norm_residual(x, residual, weight=None, *, eps=1e-6):
  """``new_residual = x + residual`` (rounded), ``y = rms_norm(new_residual)``."""
  x = _checks.check_x(x)
  residual = _checks.check_residual(residual, x)
  new_residual = (x + residual).astype(residual.dtype)
  return rms_norm(new_residual, weight, eps=eps), new_residual
