"""The public operations: argument checks, then the primitive (or, with the kill switch
off, the jnp reference)."""

from jax_rmsnorm import _checks, _switch, reference
from jax_rmsnorm.primitives import rms_norm_fwd


def rms_norm(x, weight=None, *, eps=1e-6, out_dtype=None, round_normalized=False):
  """RMSNorm over the last axis of ``x``.

  ``y = x * rsqrt(mean(x**2, axis=-1) + eps) * weight``, with statistics and scaling
  in float32 and one rounding at the end to ``x.dtype``.

  Args:
    x: array of float32, bfloat16 or float16, rank >= 1, any leading dims.
    weight: ``None`` (no scale) or an array of shape ``(x.shape[-1],)`` of any of
      the three dtypes (a float32 scale on bfloat16 activations is the usual case).
    eps: a Python float >= 0, added to the mean square.
    out_dtype: ``None`` (x's dtype), x's dtype, float32: y in float32 from bf16/f16 x
      (what flax's RMSNorm returns for bf16 x and a float32 scale by default), or, for
      float32 x, bfloat16 or float16: a float32 residual stream feeding 16-bit matmuls,
      with y rounded once and written in one pass (no separate cast).
    round_normalized: the HF/Llama order: round ``x * rsqrt(...)`` to x's dtype before
      multiplying by the weight (else one rounding at the end).

  Returns:
    ``y``, shaped like ``x``, in ``out_dtype``.
  """
  if not _switch.kernels_enabled():
    return reference.rms_norm(x, weight, eps=eps, out_dtype=out_dtype,
                              round_normalized=round_normalized)
  x = _checks.check_x(x)
  weight = _checks.check_weight(weight, x)
  eps = _checks.check_eps(eps)
  out_dtype = _checks.check_out_dtype(out_dtype, x)
  round_normalized = _checks.check_round_normalized(round_normalized)
  (y,) = rms_norm_fwd(x, None, weight, eps=eps, out_dtype=out_dtype,
                      round_normalized=round_normalized)
  return y


def rms_norm_residual(x, residual, weight=None, *, eps=1e-6, out_dtype=None,
                      round_normalized=False):
  """Fused residual add and RMSNorm, in one pass over memory.

  ``new_residual = x + residual`` rounded to ``residual.dtype``, and
  ``y = rms_norm(new_residual, weight, eps=eps)``: exactly the unfused composition.

  Args:
    x, residual: arrays of the same shape and dtype (float32, bfloat16 or float16).
    weight, eps, out_dtype, round_normalized: as in :func:`rms_norm` (``out_dtype`` is
      y's; new_residual stays in x's dtype).

  Returns:
    ``(y, new_residual)``, both shaped like ``x``.
  """
  if not _switch.kernels_enabled():
    return reference.rms_norm_residual(x, residual, weight, eps=eps, out_dtype=out_dtype,
                                       round_normalized=round_normalized)
  x = _checks.check_x(x)
  residual = _checks.check_residual(residual, x)
  weight = _checks.check_weight(weight, x)
  eps = _checks.check_eps(eps)
  out_dtype = _checks.check_out_dtype(out_dtype, x)
  round_normalized = _checks.check_round_normalized(round_normalized)
  y, new_residual = rms_norm_fwd(x, residual, weight, eps=eps, out_dtype=out_dtype,
                                 round_normalized=round_normalized)
  return y, new_residual
