"""The JAX primitive behind both ops: abstract eval, lowering, batching.

``rms_norm_fwd_p`` takes ``x, [residual], [weight]`` and returns
``y, [new_residual], [rstd]``; static parameters say which are present. Its
lowering is the FFI call ``FWD_TARGET`` on ``cpu`` and ``cuda``; the handler in
``csrc/ffi`` decodes it and runs the kernel in ``csrc/kernels`` (or ``csrc/cpu``).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

from jax_rmsnorm import _ffi

rms_norm_fwd_p = Primitive("jax_rmsnorm_fwd")
rms_norm_fwd_p.multiple_results = True


def rms_norm_fwd(x, residual=None, weight=None, *, eps, save_rstd=False):
  """Binds the primitive. Returns the tuple ``(y, [new_residual], [rstd])``."""
  operands = [a for a in (x, residual, weight) if a is not None]
  return rms_norm_fwd_p.bind(
      *operands, eps=float(eps), has_residual=residual is not None,
      has_weight=weight is not None, save_rstd=bool(save_rstd))


def _split(operands, has_residual, has_weight):
  """(x, residual or None, weight or None) from the flat operand list."""
  rest = list(operands[1:])
  residual = rest.pop(0) if has_residual else None
  weight = rest.pop(0) if has_weight else None
  return operands[0], residual, weight


def _fwd_abstract_eval(*operands, eps, has_residual, has_weight, save_rstd):
  del eps, has_weight
  x = operands[0]
  outs = [ShapedArray(x.shape, x.dtype)]
  if has_residual:
    outs.append(ShapedArray(x.shape, x.dtype))
  if save_rstd:
    outs.append(ShapedArray(x.shape[:-1], jnp.float32))
  return outs


@functools.lru_cache(maxsize=None)
def _jitted_bind(params):
  return jax.jit(functools.partial(rms_norm_fwd_p.bind, **dict(params)))


def _fwd_impl(*operands, **params):
  # Eager calls run the same compiled FFI call as jit does.
  return _jitted_bind(tuple(sorted(params.items())))(*operands)


def _fwd_lowering(platform):
  lower_ffi = jax.ffi.ffi_lowering(_ffi.FWD_TARGET)

  def lowering(ctx, *operands, eps, has_residual, has_weight, save_rstd):
    if platform == "cuda" and not _ffi.HAS_CUDA:
      raise NotImplementedError(
          "jax_rmsnorm was built without its CUDA handlers; reinstall it on a machine "
          "with nvcc (or with JAX_RMSNORM_CUDA=ON) to run on the GPU")
    return lower_ffi(ctx, *operands, eps=np.float32(eps), has_residual=bool(has_residual),
                     has_weight=bool(has_weight), save_rstd=bool(save_rstd))

  return lowering


def _move_batch_axis(a, dim, axis, size):
  """`a` with its batch axis at `axis`, broadcast there when `a` is unbatched."""
  if dim is None:
    a = jnp.expand_dims(a, axis)
    return jnp.broadcast_to(a, a.shape[:axis] + (size,) + a.shape[axis + 1:])
  return jnp.moveaxis(a, dim, axis)


def _fwd_batch(operands, dims, *, has_residual, has_weight, **params):
  size = next(a.shape[d] for a, d in zip(operands, dims) if d is not None)
  x, residual, weight = _split(operands, has_residual, has_weight)
  x_dim, residual_dim, weight_dim = _split(dims, has_residual, has_weight)
  if weight is not None and weight_dim is not None:
    # A batched weight becomes [batch, *lead, hidden]; the kernel pairs row r of x
    # with weight row r // (rows / weight_rows), so x's batch axis goes first too.
    weight = jnp.moveaxis(weight, weight_dim, 0)
    axis = 0
  else:
    # A shared weight's leading dims must stay a prefix of x's: batch right after them.
    axis = weight.ndim - 1 if weight is not None else 0
  x = _move_batch_axis(x, x_dim, axis, size)
  if residual is not None:
    residual = _move_batch_axis(residual, residual_dim, axis, size)
  operands = [a for a in (x, residual, weight) if a is not None]
  outs = rms_norm_fwd_p.bind(*operands, has_residual=has_residual, has_weight=has_weight, **params)
  return outs, [axis] * len(outs)


rms_norm_fwd_p.def_impl(_fwd_impl)
rms_norm_fwd_p.def_abstract_eval(_fwd_abstract_eval)
mlir.register_lowering(rms_norm_fwd_p, _fwd_lowering("cpu"), platform="cpu")
mlir.register_lowering(rms_norm_fwd_p, _fwd_lowering("cuda"), platform="cuda")
batching.primitive_batchers[rms_norm_fwd_p] = _fwd_batch
