"""Argument checks shared by the kernels' public functions and the reference.

Everything here runs at trace time, before anything is launched, and raises a
``TypeError`` or ``ValueError`` that names the offending argument.
"""

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_DTYPE_NAMES = "float32, bfloat16 or float16"


def as_array(name, value):
  """Returns `value` as a JAX array (or tracer), with a dtype we support."""
  if value is None:
    raise TypeError(f"{name} must be an array, got None")
  try:
    array = jnp.asarray(value)
  except TypeError as e:
    raise TypeError(f"{name} must be an array of {_DTYPE_NAMES}, got {type(value).__name__}") from e
  except ValueError as e:  # a ragged nested list
    raise ValueError(f"{name} must be an array (a nested list of one shape), got: {e}") from e
  if array.dtype not in SUPPORTED_DTYPES:
    raise TypeError(f"{name} must have dtype {_DTYPE_NAMES}, got {array.dtype}")
  return array


def check_x(x):
  x = as_array("x", x)
  if x.ndim < 1:
    raise ValueError(f"x must have rank >= 1 (normalized over its last axis), got shape {x.shape}")
  return x


def check_residual(residual, x):
  residual = as_array("residual", residual)
  if residual.shape != x.shape or residual.dtype != x.dtype:
    raise ValueError(
        f"residual must have the shape and dtype of x {x.shape} {x.dtype}, "
        f"got {residual.shape} {residual.dtype}")
  return residual


def check_weight(weight, x):
  if weight is None:
    return None
  weight = as_array("weight", weight)
  hidden = x.shape[-1]
  if weight.shape != (hidden,):
    raise ValueError(f"weight must have shape (hidden,) = ({hidden},), got {weight.shape}")
  return weight


def check_eps(eps):
  # eps is baked into the compiled call, so it must be a concrete number.
  if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
    raise TypeError(f"eps must be a Python float, got {type(eps).__name__}")
  eps = float(eps)
  if not math.isfinite(eps) or eps < 0:
    raise ValueError(f"eps must be finite and >= 0, got {eps}")
  if eps > float(np.finfo(np.float32).max):
    raise ValueError(f"eps must fit in float32 (the kernels add it in float32), got {eps}")
  return eps


def kernels_write(x_dtype, out_dtype):
  """Whether the kernels write y in `out_dtype` from x of `x_dtype`: x's own dtype,
  float32 from bf16/f16, bf16/f16 from float32 (the pairs csrc/ffi/calls.h admits)."""
  x_dtype, out_dtype = jnp.dtype(x_dtype), jnp.dtype(out_dtype)
  return (x_dtype in SUPPORTED_DTYPES and out_dtype in SUPPORTED_DTYPES
          and (out_dtype == x_dtype or jnp.dtype(jnp.float32) in (x_dtype, out_dtype)))


def check_out_dtype(out_dtype, x):
  """y's dtype: None (x's), x's own, float32 (a wider y from bf16/f16 x), or from a
  float32 x bfloat16 or float16 (a narrower y, written by the kernel in one pass).
  Returns None when y is in x's dtype."""
  if out_dtype is None:
    return None
  try:
    # As JAX reads dtypes: a Python `float` is float32 unless x64 is on.
    dtype = jax.dtypes.canonicalize_dtype(jnp.dtype(out_dtype))
  except TypeError as e:
    raise TypeError(f"out_dtype must be a dtype, got {out_dtype!r}") from e
  if dtype == x.dtype:
    return None
  if kernels_write(x.dtype, dtype):
    return dtype
  raise ValueError(
      f"out_dtype must be None, x's dtype ({x.dtype}), float32, or (for float32 x) bfloat16 "
      f"or float16, got {dtype}")


def check_round_normalized(round_normalized):
  if not isinstance(round_normalized, (bool, np.bool_)):
    raise TypeError(f"round_normalized must be a bool, got {type(round_normalized).__name__}")
  return bool(round_normalized)
