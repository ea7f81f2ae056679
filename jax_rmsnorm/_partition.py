"""How XLA splits our FFI calls across devices, for any sharding of x.

XLA replicates a custom call it knows nothing about: an all-gather of x. Instead, each
target has a partitioner, registered with XLA by name at import, that XLA calls at compile
time with the operand shardings it settled on, and that returns the per-device program:

* rows sharded (any leading dims) and hidden whole: the same FFI call on the local rows;
  the backward's dweight is summed in float32 across the row shards (the one collective);
* hidden sharded (tensor parallel): per-row float32 statistics are summed across the
  hidden shards (the only collective of the forward; the backward adds the dweight sum),
  and the normalization runs in jnp on the local slices: no all-gather of x.

Shardy learns how shardings flow through each call from the `sdy.sharding_rule` that the
lowering attaches. Everything is keyed by the FFI target name, with nothing in the
program pointing back into Python, so `jax.export` artifacts partition the same way in
any process that imports jax_rmsnorm. Single-device programs and fully manual
(`shard_map`) bodies lower to the plain call, with no rule; in `shard_map` bodies the
call goes by a second name (`*_local`) that has no partitioner, because XLA hands a
partitioner manual shardings it cannot take.

A dim whose length its shard count does not divide is gathered (correct, not fast).
"""

import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import mesh as _mesh
from jax._src import xla_bridge
from jax._src.custom_partitioning_sharding_rule import (sdy_sharding_rule_to_mlir,
                                                        str_to_sdy_sharding_rule)
from jax._src.interpreters import mlir as _mlir
from jax._src.lib import xla_client as xc
from jax._src.lib.mlir import ir
from jax._src.lib.mlir.dialects import hlo
from jax._src.sharding_impls import ShardingContext, SPMDAxisContext
from jax.extend.core import Primitive
from jax.interpreters import mlir

from jax_rmsnorm import reference

# ---------------------------------------------------------------------------- lowering


def _manual(axis_context):
  """True in a `shard_map` body. Fully manual, the call sees local arrays. Partly manual
  (`axis_names=` a subset), XLA would hand the partitioner shardings numbered within one
  manual group; the unpartitioned name makes XLA gather the other axes instead: correct,
  not fast."""
  return isinstance(axis_context, SPMDAxisContext) and bool(axis_context.manual_axes)


def _single_device(axis_context):
  return not isinstance(axis_context, (ShardingContext, SPMDAxisContext)) or (
      isinstance(axis_context, ShardingContext) and axis_context.num_devices == 1)


def with_sharding_rule(lowering, manual_lowering, roles):
  """Picks the lowering for the program: `lowering` (the partitioned target) plain on one
  device, or with a Shardy rule that says how the call's operands and results share dims
  when XLA will partition it; `manual_lowering` (the same handler under a name with no
  partitioner, which XLA would refuse inside a manual region) in `shard_map` bodies.
  `roles(params, num_results)` names what each operand and result is (see `_x_dims`)."""

  def lower(ctx, *operands, **params):
    axis_context = ctx.module_context.axis_context
    if _single_device(axis_context):
      return lowering(ctx, *operands, **params)
    if _manual(axis_context):
      return manual_lowering(ctx, *operands, **params)
    in_roles, out_roles = roles(params, len(ctx.avals_out))
    rank = ctx.avals_in[0].ndim
    weight_lead = _weight_lead([a.shape for a in ctx.avals_in], in_roles)
    names = lambda rs: ", ".join(_factors(r, rank, weight_lead) for r in rs)
    types = lambda avals: [_mlir.aval_to_ir_type(ctx.module_context, a) for a in avals]
    rule = sdy_sharding_rule_to_mlir(
        str_to_sdy_sharding_rule(names(in_roles) + " -> " + names(out_roles)),
        types(ctx.avals_in), types(ctx.avals_out))
    return lowering(ctx, *operands, _extra_attributes={"sdy.sharding_rule": rule}, **params)

  return lower


def fwd_roles(params, num_results):
  """``x, [residual], [weight] -> y, [new_residual], [rstd]``."""
  del num_results
  return (["x"] + ["x"] * params["has_residual"] + ["weight"] * params["has_weight"],
          ["x"] + ["x"] * params["has_residual"] + ["row"] * params["save_rstd"])


def bwd_roles(params, num_results):
  """``dy, s, rstd, [weight], [d_new_residual] -> dx, [dweight], [partials]``: the partials
  come with dweight, and without it as the row tiles' scratch (a second result)."""
  want_dweight = params["want_dweight"]
  return (["x", "x", "row"] + ["weight"] * params["has_weight"] + ["x"] * params["has_residual_grad"],
          ["x"] + ["weight"] * want_dweight + ["partials"] * (want_dweight or num_results == 2))


def _weight_lead(shapes, in_roles):
  """Leading dims of the weight (0 unless vmapped over weights)."""
  for shape, role in zip(shapes, in_roles):
    if role == "weight":
      return len(shape) - 1
  return 0


def _x_dims(role, rank, weight_lead):
  """Which of x's dims each dim of an operand or result is; None for a dim of its own
  (the partials' CTA dim). x-shaped: all; per-row: x's leading dims; weight-shaped: the
  weight's leading dims (a prefix of x's) and hidden; partials: those with a CTA dim."""
  rows, hidden = list(range(rank - 1)), [rank - 1]
  return {"x": rows + hidden, "row": rows, "weight": rows[:weight_lead] + hidden,
          "partials": rows[:weight_lead] + [None] + hidden}[role]


def _factors(role, rank, weight_lead):
  names = ["c" if d is None else ("h" if d == rank - 1 else f"r{d}")
           for d in _x_dims(role, rank, weight_lead)]
  return " ".join(names)  # empty: a scalar (rstd of a rank-1 x)


# ---------------------------------------------------------------------------- device grid


class _Grid:
  """An operand's sharding as an array of device ids: one axis per dim of x, then one axis
  of replicas. Dims that cannot be split evenly are folded into the replicas."""

  def __init__(self, sharding, shape):
    rank = len(shape)
    tiled = not (sharding is None or sharding.is_replicated() or sharding.is_maximal()
                 or sharding.is_manual() or sharding.is_unknown())
    tiles = list(sharding.tile_assignment_dimensions()) if tiled else []
    extra = len(tiles) - rank
    if tiled and extra >= 0 and (extra == 0 or sharding.replicate_on_last_tile_dim()
                                 or all(t == xc.OpSharding.Type.REPLICATED
                                        for t in sharding.subgroup_types())):
      devices = np.asarray(sharding.tile_assignment_devices()).reshape(tiles)
      devices = devices.reshape(tiles[:rank] + [-1])
    else:  # replicated, or a form we do not split (manual subgroups): keep it whole
      devices = np.zeros([1] * rank + [1], np.int64)
    for d in range(rank):
      if shape[d] % devices.shape[d]:
        devices = np.moveaxis(devices, d, -2).reshape(devices.shape[:d] + devices.shape[d + 1:-1] + (-1,))
        devices = np.expand_dims(devices, d)
    self.devices = devices
    self.whole = devices.size == 1

  def tiles(self, dim):
    return self.devices.shape[dim]

  def sharding(self, kept):
    """The HloSharding of an array whose dims are x's dims `kept` (in order); every other
    dim of x becomes replication."""
    if self.whole:
      return xc.HloSharding.replicate()
    dropped = [d for d in range(self.devices.ndim - 1) if d not in kept]
    devices = np.moveaxis(self.devices, dropped, [-2 - i for i in range(len(dropped))][::-1])
    devices = devices.reshape([self.devices.shape[d] for d in kept] + [-1])
    if all(t == 1 for t in devices.shape[:-1]):
      return xc.HloSharding.replicate()
    proto = xc.OpSharding()
    proto.type = xc.OpSharding.Type.OTHER
    replicas = devices.shape[-1]
    proto.tile_assignment_dimensions = list(devices.shape if replicas > 1 else devices.shape[:-1])
    proto.tile_assignment_devices = [int(d) for d in devices.flat]
    proto.replicate_on_last_tile_dim = replicas > 1
    return xc.HloSharding.from_proto(proto)

  def groups(self, dims):
    """Device groups that differ only in their tiles of x's `dims` (the replicas of one
    tile never sum with each other); None when no dim of them is split."""
    sizes = [self.devices.shape[d] for d in dims]
    if self.whole or all(s == 1 for s in sizes):
      return None
    devices = np.moveaxis(self.devices, dims, list(range(-len(dims), 0)))
    return tuple(tuple(int(d) for d in g) for g in devices.reshape(-1, int(np.prod(sizes))))

  def local(self, shape, kept):
    return tuple(n // self.devices.shape[d] for n, d in zip(shape, kept))


# ---------------------------------------------------------------------------- collective

_group_sum_p = Primitive("jax_rmsnorm_group_sum")
_group_sum_p.def_abstract_eval(lambda x, *, groups: x)


def _group_sum_lowering(ctx, x, *, groups):
  # An all-reduce over explicit device groups: the partitioner knows device ids, not mesh
  # axis names, so psum (which needs names) does not fit.
  aval = ctx.avals_in[0]
  op = hlo.AllReduceOp(
      [x.type], [x],
      replica_groups=ir.DenseIntElementsAttr.get(np.asarray(groups, np.int64)),
      channel_handle=hlo.ChannelHandle.get(_mlir.COLLECTIVE_CHANNEL_ID, _mlir.DEVICE_TO_DEVICE_TYPE),
      use_global_device_ids=ir.BoolAttr.get(True))
  scalar = _mlir.aval_to_ir_type(ctx.module_context, jax.core.ShapedArray((), aval.dtype))
  block = op.regions[0].blocks.append(scalar, scalar)
  with ir.InsertionPoint(block):
    hlo.return_([hlo.add(*block.arguments)])
  return [op.result]


mlir.register_lowering(_group_sum_p, _group_sum_lowering)


def _group_sum(x, groups):
  return x if groups is None else _group_sum_p.bind(x, groups=groups)


# ---------------------------------------------------------------------------- partitioners


def _params(backend_config):
  """The FFI attributes XLA passes back: `{eps = 1.0E-6 : f32, has_weight = true, ...}`.
  MLIR prints a float32 in hex (`0x4CEB79A3 : f32`) when no decimal form round-trips."""
  text = backend_config.decode() if isinstance(backend_config, bytes) else backend_config
  params = {}
  for name, value in re.findall(r"(\w+)\s*=\s*([^,}]+)", text):
    value = value.strip()
    number = value.split(":")[0].strip()
    if value in ("true", "false"):
      params[name] = value == "true"
    elif value.endswith(": f32"):
      params[name] = float(np.uint32(int(number, 16)).view(np.float32)) if number.lower().startswith(
          "0x") else float(number)
    else:
      params[name] = int(number)
  return params


def _module(fn, local_avals, platform, num_devices):
  """The per-device program `fn` over `local_avals`, as the bytecode XLA splices in. It is
  traced outside any mesh the user set (under explicit axes, jnp would otherwise annotate
  the local arrays with the global mesh)."""
  mesh = jax.sharding.AbstractMesh((max(num_devices, 1),), ("jax_rmsnorm_devices",))
  with _mesh.use_abstract_mesh(_mesh.empty_abstract_mesh):
    closed = jax.make_jaxpr(fn)(*local_avals)
    module = _mlir.build_mlir_module_helper(
        closed, name="jax_rmsnorm_shard", platforms=[platform], backend=None,
        axis_context=SPMDAxisContext(mesh, frozenset(mesh.axis_names)))
  return _mlir.module_to_bytecode(module)


class _Call:
  """One call as XLA's partitioner sees it: global shapes, roles, and the device grid of
  operand `x_index` (x in the forward, s in the backward), which every x-shaped operand
  and result then follows."""

  def __init__(self, arg_shapes, arg_shardings, result_shape, roles, backend, x_index, whole=False):
    self.params = _params(backend)
    self.args = _shapes_of(arg_shapes)
    self.results = _shapes_of(result_shape.tuple_shapes() if result_shape.is_tuple() else [result_shape])
    self.in_roles, self.out_roles = roles(self.params, len(self.results))
    self.result_shape = result_shape
    self.x_shape = self.args[x_index][0]
    self.rank = len(self.x_shape)
    self.hidden = self.x_shape[-1]
    self.weight_lead = _weight_lead([shape for shape, _ in self.args], self.in_roles)
    self.grid = _Grid(None if whole else arg_shardings[x_index], self.x_shape)
    self.split_hidden = self.grid.tiles(self.rank - 1) > 1
    self.num_devices = max([1] + [s.num_devices() for s in arg_shardings
                                  if s is not None and s.is_tiled()])

  def x_dims(self, role):
    return _x_dims(role, self.rank, self.weight_lead)

  def sharding(self, role):
    dims = self.x_dims(role)
    return xc.HloSharding.replicate() if None in dims else self.grid.sharding(dims)

  def local_aval(self, shape, dtype, role):
    dims = self.x_dims(role)
    local = shape if None in dims else self.grid.local(shape, dims)
    return jax.ShapeDtypeStruct(local, dtype)

  def result_sharding(self):
    """The results' sharding, a tuple sharding when the call has several."""
    results = [self.sharding(role) for role in self.out_roles]
    return (xc.HloSharding.tuple_sharding(self.result_shape, results)
            if self.result_shape.is_tuple() else results[0])

  def module(self, local_fn, platform):
    """(per-device program, operand shardings, result sharding), as XLA wants them back."""
    avals = [self.local_aval(shape, dtype, role) for (shape, dtype), role in zip(self.args, self.in_roles)]
    return (_module(local_fn, avals, platform, self.num_devices),
            [self.sharding(role) for role in self.in_roles], self.result_sharding())


def _shapes_of(shapes):
  return [(tuple(s.dimensions()), np.dtype(s.numpy_dtype())) for s in shapes]


def _fwd_partition(platform, arg_shapes, arg_shardings, result_shape, result_sharding, backend,
                   whole=False):
  from jax_rmsnorm.primitives import _expand_weight, rms_norm_fwd_p  # they import this module
  del result_sharding
  call = _Call(arg_shapes, arg_shardings, result_shape, fwd_roles, backend, x_index=0, whole=whole)
  p = call.params
  hidden_groups = call.grid.groups([call.rank - 1])

  x_dtype, y_dtype = call.args[0][1], call.results[0][1]
  round_normalized = p.get("round_normalized", False)  # v2 calls only

  def local(*operands):
    if not call.split_hidden:
      return rms_norm_fwd_p.bind(*operands, eps=p["eps"], has_residual=p["has_residual"],
                                 has_weight=p["has_weight"], save_rstd=p["save_rstd"],
                                 out_dtype=None if y_dtype == x_dtype else y_dtype,
                                 round_normalized=round_normalized)
    ops = list(operands)
    x = ops.pop(0)
    residual = ops.pop(0) if p["has_residual"] else None
    weight = ops.pop(0) if p["has_weight"] else None
    # The sum rounded to x's dtype as the kernels round it (rounded(): XLA may drop a cast
    # round trip).
    sf = x.astype(jnp.float32)
    if residual is not None:
      sf = reference.rounded(sf + residual.astype(jnp.float32), x.dtype)
    s = sf.astype(x.dtype)
    squares = _group_sum(jnp.sum(sf * sf, axis=-1), hidden_groups)
    rstd = lax.rsqrt(squares / call.hidden + jnp.float32(p["eps"]))
    y = sf * rstd[..., None]
    if round_normalized:
      y = reference.rounded(y, x.dtype)
    if weight is not None:
      y = y * _expand_weight(weight, s).astype(jnp.float32)
    return [y.astype(y_dtype)] + ([s] if residual is not None else []) + (
        [rstd] if p["save_rstd"] else [])

  return call.module(local, platform)


def _bwd_partition(platform, arg_shapes, arg_shardings, result_shape, result_sharding, backend,
                   whole=False):
  from jax_rmsnorm.primitives import backward_jnp, rms_norm_bwd_p
  del result_sharding
  call = _Call(arg_shapes, arg_shardings, result_shape, bwd_roles, backend, x_index=1, whole=whole)
  p = call.params
  want_dweight = p["want_dweight"]
  round_normalized = p.get("round_normalized", False)  # v2 calls only
  hidden_groups = call.grid.groups([call.rank - 1])
  # dweight sums over the rows that share one weight row: x's dims past the weight's lead.
  row_groups = call.grid.groups(list(range(call.weight_lead, call.rank - 1)))

  def local(dy, s, rstd, *ops):
    ops = list(ops)
    weight = ops.pop(0) if p["has_weight"] else None
    d_new = ops.pop(0) if p["has_residual_grad"] else None
    if not call.split_hidden:
      # float32 dweight per shard, rounded once after the sum across shards.
      w = weight.astype(jnp.float32) if want_dweight else weight
      outs = rms_norm_bwd_p.bind(dy, s, rstd, *[a for a in (w, d_new) if a is not None],
                                 has_weight=p["has_weight"],
                                 has_residual_grad=p["has_residual_grad"], want_dweight=want_dweight,
                                 round_normalized=round_normalized)
      dx, dweight = outs[0], (outs[1] if want_dweight else None)
    else:  # the row dot summed across the hidden shards; dweight float32 until its sum
      dx, dweight = backward_jnp(
          dy, s, rstd, weight, d_new, want_dweight=want_dweight, round_normalized=round_normalized,
          hidden=call.hidden,
          hidden_sum=lambda a: _group_sum(jnp.sum(a, axis=-1, keepdims=True), hidden_groups))
    if want_dweight:
      dweight = [_group_sum(dweight, row_groups).astype(weight.dtype)]
    else:
      dweight = []
    # The partials, when the call has them, are scratch: never read.
    partials = [jnp.zeros(shape, jnp.float32) for shape, _ in call.results[1 + len(dweight):]]
    return [dx] + dweight + partials

  return call.module(local, platform)


def _infer(roles, x_index, arg_shapes, arg_shardings, result_shape, backend):
  """Result shardings from the operands' (GSPMD propagation; Shardy uses the rule)."""
  try:
    call = _Call(arg_shapes, arg_shardings, result_shape, roles, backend, x_index)
  except Exception:  # noqa: BLE001 (XLA aborts on an exception): say replicated
    call = _Call(arg_shapes, arg_shardings, result_shape, roles, backend, x_index, whole=True)
  return call.result_sharding()


def _propagate(user_sharding, shape, backend):
  del shape, backend
  return user_sharding


def _never_raising(partition):
  """A partitioner that raises fails the compile (or, in some builds, aborts the process).
  Should ours ever fail on a sharding it did not foresee, it warns and gathers instead
  (correct, not fast); what fails regardless of the sharding still raises."""

  @functools.wraps(partition)
  def safe(platform, *args, **kwargs):
    try:
      return partition(platform, *args, **kwargs)
    except Exception as e:  # noqa: BLE001 (anything: the alternative is an abort)
      warnings.warn(f"jax_rmsnorm could not partition a call ({type(e).__name__}: {e}); "
                    "it runs on gathered operands instead", RuntimeWarning, stacklevel=1)
      return partition(platform, *args, whole=True, **kwargs)

  return safe


def register(fwd_targets, bwd_targets):
  """Registers the partitioners with XLA's CPU client (here) and every PJRT plugin (CUDA)."""
  calls = ([(t, _fwd_partition, fwd_roles, 0) for t in fwd_targets]
           + [(t, _bwd_partition, bwd_roles, 1) for t in bwd_targets])
  for target, partition, roles, x_index in calls:
    kwargs = dict(prop_user_sharding=_propagate,
                  infer_sharding_from_operands=functools.partial(_infer, roles, x_index),
                  can_side_effecting_have_replicated_sharding=True)
    partition = _never_raising(partition)
    xc.register_custom_call_partitioner(
        target, partition=functools.partial(partition, "cpu"), **kwargs)
    xla_bridge.register_plugin_callbacks(functools.partial(
        xc.register_custom_call_partitioner, name=target,
        partition=functools.partial(partition, "cuda"), **kwargs))
