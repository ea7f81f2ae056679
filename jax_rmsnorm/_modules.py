"""What the linen and nnx modules share: when the kernels can serve a call, and the
options flax's RMSNorm lacks (a scale offset, the fused residual)."""

import jax.numpy as jnp

from jax_rmsnorm import _checks, ops, reference


def last_axis_only(axes, ndim):
  axes = axes if isinstance(axes, (tuple, list)) else (axes,)
  return len(axes) == 1 and -ndim <= axes[0] < ndim and axes[0] % ndim == ndim - 1


def layout(module):
  """A flax RMSNorm's fields that say what it reduces over and how (kernel_serves' and
  normalize_reference's keywords)."""
  return dict(reduction_axes=module.reduction_axes, feature_axes=module.feature_axes,
              axis_name=module.axis_name,
              force_float32_reductions=getattr(module, "force_float32_reductions", True))


def kernel_serves(x, out_dtype, *, reduction_axes, feature_axes, axis_name, mask,
                  force_float32_reductions=True, added=()):
  """True when the kernels compute exactly what flax's RMSNorm would: statistics and
  scale over the last axis only, in float32, no cross-device statistics, no mask, and an
  output the kernels write (`_checks.kernels_write`). `x` is the normalized array;
  with a residual, `added` are the two arrays summed into it, which the fused kernel
  wants alike (no broadcasting)."""
  dtype = getattr(x, "dtype", None)
  if any(getattr(a, "dtype", None) != dtype or getattr(a, "shape", None) != x.shape for a in added):
    return False
  return (dtype is not None and getattr(x, "ndim", 0) >= 1 and _checks.kernels_write(dtype, out_dtype)
          and last_axis_only(reduction_axes, x.ndim) and last_axis_only(feature_axes, x.ndim)
          and axis_name is None and mask is None and force_float32_reductions)


def offset_scale(scale, scale_offset):
  """`scale_offset + scale` in float32 (Gemma's `1 + scale`): a [hidden] op, not a pass
  over the activations; its gradient is the scale's."""
  if scale is None or not scale_offset:
    return scale
  return scale.astype(jnp.float32) + jnp.float32(scale_offset)


def add_residual(x, residual):
  """The unfused `new_residual = x + residual`, rounded to residual's dtype: through
  reference.rounded when that is narrower than float32, or XLA on GPU would hand whoever
  reads it back as float32 (the norm) the unrounded sum."""
  total = x + residual
  if jnp.dtype(residual.dtype).itemsize < 4:
    total = reference.rounded(total.astype(jnp.float32), residual.dtype)
  return total.astype(residual.dtype)


def normalize(x, scale, eps, residual=None, out_dtype=None, round_normalized=False):
  """The kernels: y, or (y, new_residual) with the residual fused in."""
  kwargs = dict(eps=eps, out_dtype=out_dtype, round_normalized=round_normalized)
  if residual is None:
    return ops.rms_norm(x, scale, **kwargs)
  return ops.rms_norm_residual(x, residual, scale, **kwargs)


def float_dtype(x):
  """x's dtype when it is a floating one, else None."""
  dtype = getattr(x, "dtype", None)
  return dtype if dtype is not None and jnp.issubdtype(dtype, jnp.floating) else None


def normalize_reference(x, scale, eps, out_dtype, round_normalized=False, *, x_dtype=None,
                        reduction_axes, feature_axes, mask, axis_name,
                        force_float32_reductions=True):
  """The jnp reference, for the options flax lacks (an offset scale, the HF order: no flax
  computation to fall back on), which it serves over the last axis only, in float32.
  `x_dtype`: the dtype the HF order rounds to, x's own before any promotion (x's)."""
  if not (last_axis_only(reduction_axes, x.ndim) and last_axis_only(feature_axes, x.ndim)
          and mask is None and axis_name is None and force_float32_reductions):
    raise NotImplementedError(
        "scale_offset and round_normalized support statistics and a scale over the last "
        "axis only, reduced in float32 (no mask, axis_name, or force_float32_reductions=False)")
  return reference.normalize_rows(x.astype(jnp.float32), x_dtype or x.dtype, scale, eps,
                                  out_dtype, round_normalized)
