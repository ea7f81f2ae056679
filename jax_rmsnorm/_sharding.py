"""Row-sharded inputs run the FFI call per shard, with no collective.

XLA replicates a custom call it knows nothing about (an all-gather of x). JAX's own
linear-algebra FFI calls avoid that through XLA's batch partitioner, and so do we: the
target is registered as batch-partitionable (in _ffi), and the lowering marks how many
leading dims are batch dims (`num_batch_dims`) and gives Shardy a sharding rule so that
shardings propagate through the call. Unlike `custom_partitioning`, nothing calls back
into Python, so `jax.export` keeps working.

The partitioner shards every operand of rank >= num_batch_dims along the batch dims, so
the rows go to the call as [*lead, 1, hidden]: one more batch dim than the weight has dims
keeps the weight replicated. A batched weight (vmap over weights) pairs weight rows with
blocks of x rows, which a shard of rows would break: such calls stay unpartitioned.
A sharded hidden axis is gathered (correct, not yet the all-reduce of statistics).
Single-device programs lower exactly as before (no reshapes, no attributes).
"""

from jax._src.custom_partitioning_sharding_rule import (sdy_sharding_rule_to_mlir,
                                                        str_to_sdy_sharding_rule)
from jax._src.interpreters import mlir as _mlir
from jax._src.sharding_impls import ShardingContext
from jax.interpreters import mlir


def rows_partitionable(lowering):
  """Wraps an FFI `lowering` whose operands are x-shaped (x first) or the weight [hidden],
  and whose results are x-shaped or per-row [*lead]. Any other operand (a batched weight)
  leaves the call unpartitioned."""

  def partitioned(ctx, *operands, **params):
    x = ctx.avals_in[0]
    lead = len(x.shape) - 1
    axis_context = ctx.module_context.axis_context
    single_device = isinstance(axis_context, ShardingContext) and axis_context.num_devices == 1
    if single_device or lead == 0 or any(a.shape not in (x.shape, x.shape[-1:]) for a in ctx.avals_in[1:]):
      return lowering(ctx, *operands, **params)
    rows = [a.shape == x.shape for a in ctx.avals_in]

    def widen(aval):  # [*lead, ...] -> [*lead, 1, ...]
      return aval.update(shape=aval.shape[:lead] + (1,) + aval.shape[lead:])

    avals_in = [widen(a) if r else a for a, r in zip(ctx.avals_in, rows)]
    avals_out = [widen(a) for a in ctx.avals_out]
    values = [_mlir.reshape(ctx, v, a) if r else v for v, a, r in zip(operands, avals_in, rows)]
    batch = " ".join(f"b{i}" for i in range(lead + 1))

    def factors(aval, is_rows):
      if not is_rows:
        return "h"
      return batch + (" h" if aval.ndim > lead + 1 else "")

    rule = str_to_sdy_sharding_rule(
        ", ".join(factors(a, r) for a, r in zip(avals_in, rows)) + " -> " +
        ", ".join(factors(a, True) for a in avals_out))
    types = lambda avals: [_mlir.aval_to_ir_type(ctx.module_context, a) for a in avals]
    attributes = {
        "mhlo.frontend_attributes": mlir.ir_attribute({"num_batch_dims": str(lead + 1)}),
        "sdy.sharding_rule": sdy_sharding_rule_to_mlir(rule, types(avals_in), types(avals_out)),
    }
    results = lowering(ctx.replace(avals_in=avals_in, avals_out=avals_out), *values,
                       _extra_attributes=attributes, **params)
    return [_mlir.reshape(ctx, r, a) for r, a in zip(results, ctx.avals_out)]

  return partitioned
