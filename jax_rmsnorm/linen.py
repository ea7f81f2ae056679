"""`jax_rmsnorm.linen.RMSNorm`: a drop-in `flax.linen.RMSNorm` on the kernels."""

import flax.linen as nn
import jax.numpy as jnp

from jax_rmsnorm import _modules


class RMSNorm(nn.RMSNorm):
  """`flax.linen.RMSNorm` with the same fields, the same parameter (``scale``, shape
  ``(features,)``, ``param_dtype``), the same output dtype and the same numerics within
  rounding: checkpoints of either load in the other.

  The kernels serve the call when flax would compute in float32 over the last axis and
  write x's dtype, float32, or from float32 x bf16/f16 (``dtype=jnp.bfloat16`` on a
  float32 residual stream: flax computes in float32 and rounds once, as the kernels do,
  which write the 16-bit y in one pass): ``reduction_axes`` and ``feature_axes`` the last axis, no
  ``axis_name``, no ``mask``, ``force_float32_reductions=True`` (flax's defaults; with
  ``dtype=None``, bf16 x and a float32 scale give a float32 y, which the kernels write from
  bf16 reads; its gradient runs in float32 jnp). Every other configuration runs flax's own
  computation, with flax's result; with ``scale_offset`` or ``round_normalized`` it runs the
  jnp reference, which raises ``NotImplementedError`` for statistics or a scale other than
  over the last axis in float32.

  Extra fields (defaults keep flax's behaviour):
    scale_offset: multiply by ``scale_offset + scale`` (Gemma: 1.0, with
      ``scale_init=zeros``), added in float32.
    round_normalized: the HF/Llama order: round the normalized x to x's dtype, then
      multiply by the scale.

  ``__call__(x, *, mask=None, residual=None)``: with ``residual``, returns
  ``(y, new_residual)`` for ``new_residual = x + residual`` (rounded to residual's
  dtype) and ``y = RMSNorm(new_residual)``, fused in one pass (the pre-norm block's
  ``h = h + f(h); y = norm(h)``).
  """

  scale_offset: float = 0.0
  round_normalized: bool = False

  @nn.compact
  def __call__(self, x, *, mask=None, residual=None):
    x_in = x if residual is None else _modules.add_residual(x, residual)  # the normalized array
    use_kernels = _modules.kernel_serves(
        x_in, self._out_dtype(x_in), mask=mask, added=() if residual is None else (x, residual),
        **_modules.layout(self))
    if use_kernels or self.scale_offset or self.round_normalized:
      scale = (self.param("scale", self.scale_init, (x_in.shape[-1],), self.param_dtype)
               if self.use_scale else None)
      scale = _modules.offset_scale(scale, self.scale_offset)
      if use_kernels:
        return _modules.normalize(x, scale, self.epsilon, residual, self._out_dtype(x_in),
                                  self.round_normalized)
      y = _modules.normalize_reference(x_in, scale, self.epsilon, self._out_dtype(x_in),
                                       self.round_normalized, mask=mask, **_modules.layout(self))
    else:
      y = super().__call__(x_in, mask=mask)
    return y if residual is None else (y, x_in)

  def _out_dtype(self, x):
    """flax's rule: ``dtype``, or the promotion of x and the scale as it is (a checkpoint's
    scale may differ from ``param_dtype``; at init it is ``param_dtype``)."""
    if self.dtype is not None:
      return jnp.dtype(self.dtype)
    if not self.use_scale:
      return jnp.result_type(x)
    scale = self.get_variable("params", "scale")
    return jnp.result_type(x, scale.dtype if scale is not None else jnp.dtype(self.param_dtype))

