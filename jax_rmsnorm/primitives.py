"""The JAX primitives behind both ops: abstract eval, lowering, batching, autodiff.

``rms_norm_fwd_p``: ``x, [residual], [weight] -> y, [new_residual], [rstd]``. Lowers to
the FFI call ``FWD_TARGET``; ``rstd`` (float32, per row) is written only when asked for,
which only the JVP rule does, so inference writes nothing extra.

``rms_norm_tangent_p``: the linearized forward, linear in ``dx, [dresidual], [dweight]``
given ``s`` (x or new_residual), ``rstd`` and ``weight``. Evaluating it (forward mode:
``jax.jvp``, ``jax.jacfwd``) runs plain jnp; transposing it (reverse mode: ``grad``,
``vjp``) binds ``rms_norm_bwd_p``.

``rms_norm_bwd_p``: ``dy, s, rstd, [weight], [d_new_residual] -> dx, [dweight], [partials]``.
Lowers to the FFI call ``BWD_TARGET`` (``BWD_TARGET_V2`` for the HF order's dweight); ``partials`` is the float32 scratch in which the
kernel reduces ``dweight`` deterministically (XLA allocates it, so the handler never does).
Without dweight the longest rows take it too: the row-tile kernel exchanges its rows' sums there.

Second derivatives (``jax.hessian``, grad of grad, forward over forward) differentiate the
tangent and backward primitives through their jnp twins (``_tangent_jnp``,
``backward_jnp``): the primal values still come from the kernels, only the derivatives of
the derivatives are jnp.

Each FFI call is decoded by ``csrc/ffi/calls.h`` and runs ``csrc/kernels`` (CUDA) or
``csrc/cpu`` (CPU).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jax_rmsnorm import _ffi, _partition, reference

rms_norm_fwd_p = Primitive("jax_rmsnorm_fwd")
rms_norm_fwd_p.multiple_results = True
rms_norm_tangent_p = Primitive("jax_rmsnorm_tangent")
rms_norm_tangent_p.multiple_results = True
rms_norm_bwd_p = Primitive("jax_rmsnorm_bwd")
rms_norm_bwd_p.multiple_results = True


def rms_norm_fwd(x, residual=None, weight=None, *, eps, save_rstd=False, out_dtype=None,
                 round_normalized=False):
  """Binds the forward. Returns the tuple ``(y, [new_residual], [rstd])``; y is in
  ``out_dtype`` (None: x's dtype)."""
  return rms_norm_fwd_p.bind(
      *_same_varying(*_present(x, residual, weight)), eps=float(eps),
      has_residual=residual is not None, has_weight=weight is not None, save_rstd=bool(save_rstd),
      out_dtype=None if out_dtype is None else np.dtype(out_dtype),
      round_normalized=bool(round_normalized))


# ---------------------------------------------------------------------------- helpers


def _present(*operands):
  return [a for a in operands if a is not None]


def _same_varying(*operands):
  """Inside `shard_map`, casts operands that vary over fewer manual axes than the others
  (a replicated weight beside sharded rows) to varying, as jnp's own ops do. The transpose
  of that cast is the psum that sums the weight's gradient across the shards."""
  varying = [getattr(getattr(jax.typeof(a), "mat", None), "varying", frozenset()) for a in operands]
  union = frozenset().union(*varying)
  return [a if v == union else jax.lax.pcast(a, tuple(sorted(union - v)), to="varying")
          for a, v in zip(operands, varying)]


def _derived(aval, shape, dtype, dims=None):
  """An output aval from input `aval`: it keeps the manual axes it varies over (inside
  `shard_map`) and, over explicit mesh axes, the sharding of the dims it shares: output
  dim i takes that of input dim ``dims[i]`` (None: whole; default: the same dims)."""
  sharding = aval.sharding
  if dims is not None:
    spec = tuple(sharding.spec) + (None,) * (aval.ndim - len(sharding.spec))
    sharding = sharding.update(spec=jax.sharding.PartitionSpec(
        *[None if d is None else spec[d] for d in dims]))
  return aval.update(shape=tuple(shape), dtype=dtype, sharding=sharding, weak_type=False)


def _take(values, *present):
  """Splits a flat operand list into one entry per flag (None where the flag is off)."""
  values, out = list(values), []
  for flag in present:
    out.append(values.pop(0) if flag else None)
  assert not values, values
  return out


def _dweight_partials_shape(s_shape, weight_shape, dtype):
  """[*weight_lead, ctas_per_weight_row, hidden]: one float32 row per backward CTA."""
  hidden = s_shape[-1]
  lead = tuple(weight_shape[:-1])
  weight_rows = math.prod(lead)
  rows = math.prod(s_shape[:-1])
  rows_per_weight = rows // weight_rows if weight_rows else 0
  ctas = _ffi.bwd_ctas_per_weight_row(rows_per_weight, hidden, jnp.dtype(dtype).itemsize)
  return lead + (ctas, hidden)


def _bwd_has_partials(s_shape, dtype, want_dweight):
  """Whether the backward has the partials result: with dweight always; without it where
  the row-tile kernel (the longest rows) exchanges its rows' sums in them, from the row
  length alone, so the answer outlives vmap and row sharding."""
  hidden = s_shape[-1] if s_shape else 0
  return want_dweight or (_concrete(s_shape) and _ffi.bwd_exchanges_in_partials(hidden, jnp.dtype(dtype).itemsize))


def _move_batch_axis(a, dim, axis, size):
  """`a` with its batch axis at `axis`, broadcast there when `a` is unbatched."""
  if dim is None:
    a = jnp.expand_dims(a, axis)
    return jnp.broadcast_to(a, a.shape[:axis] + (size,) + a.shape[axis + 1:])
  return jnp.moveaxis(a, dim, axis)


def _batch(rows_like, row_dims, weight_like, weight_dims, size, batch_weight=False):
  """Moves batch axes so that the primitive sees one more leading dim.

  ``rows_like`` are x-shaped or per-row operands, ``weight_like`` weight-shaped ones
  (None where absent). A batched weight (or `batch_weight`) goes to axis 0 with x's
  batch axis; the kernel pairs each weight row with its block of x rows. A shared
  weight's leading dims must stay a prefix of x's, so x's batch axis goes right after
  them. Returns (rows_like, weight_like, axis of the batch in x-shaped outputs).
  """
  weights = [w for w in weight_like if w is not None]
  if batch_weight or any(d is not None for w, d in zip(weight_like, weight_dims) if w is not None):
    weight_like = [None if w is None else _move_batch_axis(w, d, 0, size)
                   for w, d in zip(weight_like, weight_dims)]
    axis = 0
  else:
    axis = weights[0].ndim - 1 if weights else 0
  rows_like = [None if a is None else _move_batch_axis(a, d, axis, size)
               for a, d in zip(rows_like, row_dims)]
  return rows_like, weight_like, axis


def _concrete(shape):
  """No symbolic dims (those of a shape-polymorphic export)."""
  return all(isinstance(d, (int, np.integer)) for d in shape)


def _batch_size(operands, dims):
  return next(a.shape[d] for a, d in zip(operands, dims) if d is not None)


@functools.lru_cache(maxsize=None)
def _jitted_bind(primitive, params):
  return jax.jit(functools.partial(primitive.bind, **dict(params)))


def _def_impl(primitive):
  # Eager calls run the same compiled FFI call that jit does.
  primitive.def_impl(lambda *operands, **params: _jitted_bind(
      primitive, tuple(sorted(params.items())))(*operands))


def _ffi_lowering(target, platform, attributes):
  """Lowering to FFI target `target(params)`; `attributes(avals_in, params)` gives its
  attributes. `_extra_attributes` go on the custom call op itself (see _partition)."""

  def lowering(ctx, *operands, _extra_attributes=None, **params):
    if platform == "cuda" and not _ffi.HAS_CUDA:
      raise NotImplementedError(
          "jax_rmsnorm was built without its CUDA handlers; reinstall it on a machine "
          "with nvcc (or with JAX_RMSNORM_CUDA=ON) to run on the GPU")
    lower = jax.ffi.ffi_lowering(target(params), extra_attributes=_extra_attributes)
    return lower(ctx, *operands, **attributes(ctx.avals_in, params))

  return lowering


def _register_lowerings(primitive, target, attributes, roles):
  """`target(params)` names the FFI target of a call."""
  for platform in ("cpu", "cuda"):
    lowering = _partition.with_sharding_rule(
        _ffi_lowering(target, platform, attributes),
        _ffi_lowering(lambda params: _ffi.manual_target(target(params)), platform, attributes),
        roles)
    mlir.register_lowering(primitive, lowering, platform=platform)


# ---------------------------------------------------------------------------- forward


def _fwd_abstract_eval(*operands, eps, has_residual, has_weight, save_rstd, out_dtype,
                       round_normalized):
  del eps, has_weight, round_normalized
  x = operands[0]
  outs = [_derived(x, x.shape, out_dtype or x.dtype)]
  if has_residual:
    outs.append(_derived(x, x.shape, x.dtype))
  if save_rstd:
    outs.append(_derived(x, x.shape[:-1], jnp.float32, range(x.ndim - 1)))
  return outs


def _fwd_target(params):
  """v1 unless the call needs v2's options (v1 keeps lowering as before, so its exports
  and HLO do not change)."""
  if params["out_dtype"] is not None or params["round_normalized"]:
    return _ffi.FWD_TARGET_V2
  return _ffi.FWD_TARGET


def _fwd_attributes(avals_in, params):
  del avals_in
  attributes = dict(eps=np.float32(params["eps"]), has_residual=bool(params["has_residual"]),
                    has_weight=bool(params["has_weight"]), save_rstd=bool(params["save_rstd"]))
  if _fwd_target(params) == _ffi.FWD_TARGET_V2:
    attributes["round_normalized"] = bool(params["round_normalized"])
  return attributes


def _fwd_batch(operands, dims, *, has_residual, has_weight, **params):
  x, residual, weight = _take(operands, True, has_residual, has_weight)
  x_dim, residual_dim, weight_dim = _take(dims, True, has_residual, has_weight)
  (x, residual), (weight,), axis = _batch(
      [x, residual], [x_dim, residual_dim], [weight], [weight_dim], _batch_size(operands, dims))
  outs = rms_norm_fwd_p.bind(*_present(x, residual, weight), has_residual=has_residual,
                             has_weight=has_weight, **params)
  return outs, [axis] * len(outs)


def _fwd_jvp(primals, tangents, *, eps, has_residual, has_weight, save_rstd, out_dtype,
             round_normalized):
  x, residual, weight = _take(primals, True, has_residual, has_weight)
  dx, dresidual, dweight = _take(tangents, True, has_residual, has_weight)
  outs = rms_norm_fwd_p.bind(*primals, eps=eps, has_residual=has_residual,
                             has_weight=has_weight, save_rstd=True, out_dtype=out_dtype,
                             round_normalized=round_normalized)
  y, new_residual, rstd = _take(outs, True, has_residual, True)
  s = new_residual if has_residual else x
  has_weight_tangent = has_weight and type(dweight) is not ad.Zero
  tangent_outs = rms_norm_tangent_p.bind(
      s, rstd, *_present(weight), ad.instantiate_zeros(dx),
      *([ad.instantiate_zeros(dresidual)] if has_residual else []),
      *([dweight] if has_weight_tangent else []),
      has_residual=has_residual, has_weight=has_weight, has_weight_tangent=has_weight_tangent,
      y_dtype=out_dtype, round_normalized=_rounds_n(round_normalized and has_weight_tangent, s.dtype))
  primal_out = [y] + ([new_residual] if has_residual else []) + ([rstd] if save_rstd else [])
  tangent_out = list(tangent_outs)
  if save_rstd:  # only reached when differentiating a differentiated forward
    ds = tangent_outs[1] if has_residual else ad.instantiate_zeros(dx)
    n = s.astype(jnp.float32) * rstd[..., None]
    tangent_out.append(-rstd * jnp.mean(n * ds.astype(jnp.float32), axis=-1) * rstd)
  return primal_out, tangent_out


# ---------------------------------------------------------------------------- tangent


def _rounds_n(round_normalized, dtype):
  """Whether the HF order's rounding of n to `dtype` changes dweight: not for float32 rows
  (canonical, so that their gradients keep the v1 backward)."""
  return bool(round_normalized) and jnp.dtype(dtype).itemsize < 4


def _tangent_abstract_eval(s, *operands, has_residual, has_weight, has_weight_tangent, y_dtype,
                           round_normalized):
  del operands, has_weight, has_weight_tangent, round_normalized
  return [_derived(s, s.shape, y_dtype or s.dtype)] + [_derived(s, s.shape, s.dtype)] * has_residual


def _tangent_jnp(s, rstd, *operands, has_residual, has_weight, has_weight_tangent, y_dtype,
                 round_normalized):
  """dy = rstd * w * (ds - n * mean(n * ds)) + n_w * dweight with n = s * rstd, in float32;
  n_w is n, or in the HF order n rounded to s's dtype (y = round(n) * w there; the rounding
  passes the tangents of s straight through)."""
  weight, dx, dresidual, dweight = _take(operands, has_weight, True, has_residual, has_weight_tangent)
  ds = dx.astype(jnp.float32)
  if has_residual:
    ds = ds + dresidual.astype(jnp.float32)
  rstd = rstd[..., None]
  n = s.astype(jnp.float32) * rstd
  dy = rstd * (ds - n * jnp.mean(n * ds, axis=-1, keepdims=True))
  if has_weight:
    dy = dy * _expand_weight(weight, s).astype(jnp.float32)
  if has_weight_tangent:
    n_w = reference.rounded(n, s.dtype) if round_normalized else n
    dy = dy + n_w * _expand_weight(dweight, s).astype(jnp.float32)
  outs = [dy.astype(y_dtype or s.dtype)]
  if has_residual:
    outs.append(ds.astype(s.dtype))
  return outs


def _expand_weight(weight, s):
  """A [*lead, hidden] weight broadcastable against s [*lead, *rest, hidden]."""
  return weight.reshape(weight.shape[:-1] + (1,) * (s.ndim - weight.ndim) + weight.shape[-1:])


def _tangent_batch(operands, dims, *, has_residual, has_weight, has_weight_tangent, y_dtype,
                   round_normalized):
  s, rstd, weight, dx, dresidual, dweight = _take(
      operands, True, True, has_weight, True, has_residual, has_weight_tangent)
  s_d, rstd_d, weight_d, dx_d, dresidual_d, dweight_d = _take(
      dims, True, True, has_weight, True, has_residual, has_weight_tangent)
  (s, rstd, dx, dresidual), (weight, dweight), axis = _batch(
      [s, rstd, dx, dresidual], [s_d, rstd_d, dx_d, dresidual_d], [weight, dweight],
      [weight_d, dweight_d], _batch_size(operands, dims))
  outs = rms_norm_tangent_p.bind(
      *_present(s, rstd, weight, dx, dresidual, dweight), has_residual=has_residual,
      has_weight=has_weight, has_weight_tangent=has_weight_tangent, y_dtype=y_dtype,
      round_normalized=round_normalized)
  return outs, [axis] * len(outs)


def _tangent_transpose(cotangents, s, rstd, *operands, has_residual, has_weight, has_weight_tangent,
                       y_dtype, round_normalized):
  del y_dtype
  weight, dx, dresidual, dweight = _take(operands, has_weight, True, has_residual, has_weight_tangent)
  ct_y, ct_new_residual = _take(cotangents, True, has_residual)
  ct_y = ad.instantiate_zeros(ct_y)
  has_residual_grad = has_residual and type(ct_new_residual) is not ad.Zero
  want_dweight = has_weight_tangent and ad.is_undefined_primal(dweight)
  # The backward kernel reads dy in x's dtype: a y of another dtype (float32 from bf16/f16
  # x, bf16/f16 from float32 x) has its cotangent take the float32 jnp backward instead
  # (as exact as flax's). So do symbolic shapes (a shape-polymorphic export): the kernel's
  # dweight partials are sized from the row count.
  kernel_ok = ct_y.dtype == s.dtype and _concrete(s.shape)
  backward = rms_norm_bwd if kernel_ok else backward_jnp
  d_s, d_weight = backward(ct_y, s, rstd, weight, ct_new_residual if has_residual_grad else None,
                           want_dweight=want_dweight, round_normalized=round_normalized)
  if d_weight is not None:
    d_weight = d_weight.astype(weight.dtype)  # backward_jnp's is float32
  # ds flows unchanged to both x and residual (new_residual = x + residual).
  return ([None, None] + ([None] if has_weight else [])
          + [d_s if ad.is_undefined_primal(dx) else None]
          + ([d_s if ad.is_undefined_primal(dresidual) else None] if has_residual else [])
          + ([d_weight] if has_weight_tangent else []))


def _jvp_through(fn, primals, tangents):
  """The JVP of `fn` (plain jnp, a primitive's twin), symbolic-zero tangents made dense."""
  return jax.jvp(fn, tuple(primals), tuple(ad.instantiate_zeros(t) for t in tangents))


def _tangent_jvp(primals, tangents, **params):
  # Only second derivatives get here (forward over forward, reverse over forward): the
  # tangent primitive is jnp already, so its twin gives both values.
  outs, tangent_outs = _jvp_through(functools.partial(_tangent_jnp, **params), primals, tangents)
  return list(outs), list(tangent_outs)


# ---------------------------------------------------------------------------- backward


def rms_norm_bwd(dy, s, rstd, weight=None, d_new_residual=None, *, want_dweight,
                 round_normalized=False):
  """Binds the backward. Returns ``(dx, dweight or None)``; `round_normalized`: dweight of
  the HF order's forward (dy times n rounded to s's dtype)."""
  outs = rms_norm_bwd_p.bind(
      dy, s, rstd, *_present(weight, d_new_residual), has_weight=weight is not None,
      has_residual_grad=d_new_residual is not None, want_dweight=bool(want_dweight),
      round_normalized=_rounds_n(round_normalized and want_dweight, s.dtype))
  return outs[0], (outs[1] if want_dweight else None)


def _sum_over_hidden(a):
  return jnp.sum(a, axis=-1, keepdims=True)


def backward_jnp(dy, s, rstd, weight=None, d_new_residual=None, *, want_dweight,
                 round_normalized=False, hidden_sum=_sum_over_hidden, hidden=None):
  """rms_norm_bwd's results in float32 jnp, dy in any float dtype: (dx in s's dtype,
  dweight in float32 or None). A hidden-sharded partition passes `hidden_sum` (a row's sum
  across the hidden shards) and `hidden` (the whole row's length)."""
  rstd = rstd[..., None]
  n = s.astype(jnp.float32) * rstd
  g = dy.astype(jnp.float32)
  gw = g if weight is None else g * _expand_weight(weight, s).astype(jnp.float32)
  ds = rstd * (gw - n * (hidden_sum(gw * n) / (hidden or s.shape[-1])))
  if d_new_residual is not None:
    ds = ds + d_new_residual.astype(jnp.float32)
  d_weight = None
  if want_dweight:  # summed over the rows a [*lead, hidden] weight is shared by
    n_w = reference.rounded(n, s.dtype) if round_normalized else n
    d_weight = jnp.sum(g * n_w, axis=tuple(range(weight.ndim - 1, s.ndim - 1)))
  return ds.astype(s.dtype), d_weight


def _bwd_jvp(primals, tangents, *, has_weight, has_residual_grad, want_dweight, round_normalized):
  """The backward's own derivative (second derivatives only): the kernel's values, the
  tangents of backward_jnp's. The dweight partials are scratch, with a zero tangent."""
  outs = rms_norm_bwd_p.bind(*primals, has_weight=has_weight, has_residual_grad=has_residual_grad,
                             want_dweight=want_dweight, round_normalized=round_normalized)

  def twin(dy, s, rstd, *rest):
    weight, d_new = _take(rest, has_weight, has_residual_grad)
    dx, dweight = backward_jnp(dy, s, rstd, weight, d_new, want_dweight=want_dweight,
                               round_normalized=round_normalized)
    return (dx,) if dweight is None else (dx, dweight.astype(weight.dtype))

  _, tangent_outs = _jvp_through(twin, primals, tangents)
  tangent_outs = list(tangent_outs)
  tangent_outs += [ad.Zero(jax.typeof(partials).to_tangent_aval()) for partials in outs[len(tangent_outs):]]
  return outs, tangent_outs


def _bwd_abstract_eval(dy, s, rstd, *operands, has_weight, has_residual_grad, want_dweight,
                       round_normalized):
  del dy, rstd, has_residual_grad, round_normalized
  outs = [_derived(s, s.shape, s.dtype)]
  weight = operands[0] if has_weight else None
  if want_dweight:
    outs.append(_derived(weight, weight.shape, weight.dtype))
  if _bwd_has_partials(s.shape, s.dtype, want_dweight):
    # [*weight lead, ctas, hidden], sharded like the weight's lead; no weight: one weight row.
    ref, weight_shape = (s, s.shape[-1:]) if weight is None else (weight, weight.shape)
    partials = _dweight_partials_shape(s.shape, weight_shape, s.dtype)
    outs.append(_derived(ref, partials, jnp.float32, [*range(len(weight_shape) - 1), None, None]))
  return outs


def _bwd_target(params):
  """v1 unless the call needs the HF order's dweight (v1 keeps lowering as before)."""
  return _ffi.BWD_TARGET_V2 if params["round_normalized"] else _ffi.BWD_TARGET


def _bwd_attributes(avals_in, params):
  s = avals_in[1]
  weight_shape = avals_in[3].shape if params["has_weight"] else s.shape[-1:]
  ctas = _dweight_partials_shape(s.shape, weight_shape, s.dtype)[-2]
  attributes = dict(has_weight=bool(params["has_weight"]),
                    has_residual_grad=bool(params["has_residual_grad"]),
                    want_dweight=bool(params["want_dweight"]), ctas_per_weight_row=np.int64(ctas))
  if _bwd_target(params) == _ffi.BWD_TARGET_V2:
    attributes["round_normalized"] = True
  return attributes


def _bwd_batch(operands, dims, *, has_weight, has_residual_grad, want_dweight, round_normalized):
  dy, s, rstd, weight, d_new = _take(operands, True, True, True, has_weight, has_residual_grad)
  dy_d, s_d, rstd_d, weight_d, d_new_d = _take(dims, True, True, True, has_weight, has_residual_grad)
  # Each batch element needs its own dweight, so a wanted dweight batches the weight.
  (dy, s, rstd, d_new), (weight,), axis = _batch(
      [dy, s, rstd, d_new], [dy_d, s_d, rstd_d, d_new_d], [weight], [weight_d],
      _batch_size(operands, dims), batch_weight=want_dweight)
  if not _concrete(s.shape):
    # A symbolic batch (vmap in a shape-polymorphic export): the jnp backward, as
    # _tangent_transpose takes for symbolic shapes. The partials are scratch nobody reads.
    dx, dweight = backward_jnp(dy, s, rstd, weight, d_new, want_dweight=want_dweight,
                               round_normalized=round_normalized)
    outs = [dx] + ([dweight.astype(weight.dtype)] if want_dweight else [])
    # The unbatched call's shapes were concrete: its answer follows from the row length.
    if _bwd_has_partials(s.shape[-1:], s.dtype, want_dweight):
      outs.append(jnp.zeros((), jnp.float32))
    return outs, [axis] + [0] * want_dweight + [None] * (len(outs) - 1 - want_dweight)
  outs = rms_norm_bwd_p.bind(*_present(dy, s, rstd, weight, d_new), has_weight=has_weight,
                             has_residual_grad=has_residual_grad, want_dweight=want_dweight,
                             round_normalized=round_normalized)
  # The partials follow the weight's lead dims: batched at 0 when the weight is (always
  # with dweight), else not at all (the scratch of one shared weight).
  weight_batched = want_dweight or (weight_d is not None)
  return outs, [axis] + [0] * want_dweight + [0 if weight_batched else None] * (len(outs) - 1 - want_dweight)


# ---------------------------------------------------------------------------- registration

_def_impl(rms_norm_fwd_p)
rms_norm_fwd_p.def_abstract_eval(_fwd_abstract_eval)
_register_lowerings(rms_norm_fwd_p, _fwd_target, _fwd_attributes, _partition.fwd_roles)
batching.primitive_batchers[rms_norm_fwd_p] = _fwd_batch
ad.primitive_jvps[rms_norm_fwd_p] = _fwd_jvp

rms_norm_tangent_p.def_impl(_tangent_jnp)
rms_norm_tangent_p.def_abstract_eval(_tangent_abstract_eval)
mlir.register_lowering(rms_norm_tangent_p, mlir.lower_fun(_tangent_jnp, multiple_results=True))
batching.primitive_batchers[rms_norm_tangent_p] = _tangent_batch
ad.primitive_transposes[rms_norm_tangent_p] = _tangent_transpose
ad.primitive_jvps[rms_norm_tangent_p] = _tangent_jvp

_def_impl(rms_norm_bwd_p)
rms_norm_bwd_p.def_abstract_eval(_bwd_abstract_eval)
_register_lowerings(rms_norm_bwd_p, _bwd_target, _bwd_attributes, _partition.bwd_roles)
batching.primitive_batchers[rms_norm_bwd_p] = _bwd_batch
ad.primitive_jvps[rms_norm_bwd_p] = _bwd_jvp
