"""`jax_rmsnorm.nnx.RMSNorm`: a drop-in `flax.nnx.RMSNorm` on the kernels."""

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as _flax_dtypes

from jax_rmsnorm import _modules


class RMSNorm(nnx.RMSNorm):
  """`flax.nnx.RMSNorm` with the same constructor (``num_features``, ``epsilon``,
  ``dtype``, ``param_dtype``, ``use_scale``, ``scale_init``, ``rngs``, ...), the same
  ``scale`` parameter and the same numerics within rounding: like flax, x and the scale
  are first promoted to ``dtype`` (so with ``dtype=jnp.bfloat16`` the scale is rounded
  to bf16).

  The kernels serve the call when that promotion leaves x's dtype unchanged or makes it
  float32 (not when it narrows a float32 x: flax then normalizes the rounded x), and flax would reduce over the last axis: ``reduction_axes`` and ``feature_axes`` the last
  axis, no ``axis_name``, no ``mask``, flax's default ``promote_dtype``. Otherwise flax's
  own computation runs, with flax's result.

  Extra argument: ``scale_offset`` (Gemma: 1.0 with ``scale_init=zeros``) multiplies by
  ``scale_offset + scale``, added in float32; ``round_normalized`` the HF/Llama order
  (round the normalized x to x's dtype, then scale). ``__call__(x, mask=None, *, residual=None)``:
  with ``residual``, returns ``(y, new_residual)``, fused (see the linen module).
  """

  def __init__(self, num_features, *, scale_offset=0.0, round_normalized=False, **kwargs):
    super().__init__(num_features, **kwargs)
    self.scale_offset = scale_offset
    self.round_normalized = round_normalized

  def __call__(self, x, mask=None, *, residual=None):
    x_in = x if residual is None else _modules.add_residual(x, residual)  # the normalized array
    scale = self.scale[...] if self.scale else None
    # flax's promotion decides the output dtype (and turns lists into arrays).
    x_promoted, scale = self.promote_dtype((x_in, scale), dtype=self.dtype)
    # A promotion that narrows x (float32 x, dtype=bf16) rounds it before the statistics,
    # which the kernels, reading x, would not: flax's computation serves that.
    use_kernels = (
        self.promote_dtype is _flax_dtypes.promote_dtype and hasattr(x_promoted, "dtype")
        and _modules.kernel_serves(x_in, x_promoted.dtype, mask=mask,
                                   added=() if residual is None else (x, residual),
                                   **_modules.layout(self))
        and jnp.dtype(x_promoted.dtype).itemsize >= jnp.dtype(x_in.dtype).itemsize)
    if use_kernels:
      # x promoted to float32 (flax's default for bf16 x and a float32 scale) is exact:
      # the kernels read bf16 and write float32 instead.
      return _modules.normalize(x, _modules.offset_scale(scale, self.scale_offset), self.epsilon,
                                residual, x_promoted.dtype, self.round_normalized)
    if (self.scale_offset or self.round_normalized) and hasattr(x_promoted, "dtype"):
      y = _modules.normalize_reference(x_promoted, _modules.offset_scale(scale, self.scale_offset),
                                       self.epsilon, x_promoted.dtype, self.round_normalized,
                                       x_dtype=_modules.float_dtype(x_in),  # before promotion
                                       mask=mask, **_modules.layout(self))
    else:
      y = super().__call__(x_in, mask)
    return y if residual is None else (y, x_in)
