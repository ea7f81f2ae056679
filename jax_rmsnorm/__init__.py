"""RMSNorm and fused residual-add RMSNorm as XLA FFI calls behind JAX primitives."""

from jax_rmsnorm import reference
from jax_rmsnorm._ffi import HAS_CUDA
from jax_rmsnorm.ops import rms_norm, rms_norm_residual

__all__ = ["rms_norm", "rms_norm_residual", "reference", "HAS_CUDA"]
__version__ = "0.1.0"
