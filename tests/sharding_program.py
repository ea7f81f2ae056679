"""Run by test_sharding.py in a fresh interpreter with 8 host CPU devices (XLA_FLAGS must
be set before jax starts). Prints one line per check; any failure raises."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jax_rmsnorm

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
DISABLED = [jax.export.DisabledSafetyCheck.custom_call(n) for n in ("jax_rmsnorm_fwd_v1", "jax_rmsnorm_bwd_v1")]


def collectives(compiled_text):
  return sorted({c for c in COLLECTIVES if c in compiled_text})


def both_ops(x, r, w):
  y, new_residual = jax_rmsnorm.rms_norm_residual(x, r, w)
  return jax_rmsnorm.rms_norm(x, w), y, new_residual


def same(a, b, what):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(u, np.float32), np.asarray(v, np.float32), err_msg=what)


def main():
  assert jax.device_count() == 8, jax.devices()
  rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
  mesh1 = Mesh(np.array(jax.devices()), ("rows",))
  mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  cases = [
      ("rows 1-D mesh, rank 2", mesh1, (64, 256), P("rows")),
      ("rows 2-D mesh, rank 3", mesh2, (8, 16, 256), P("data", "model")),
      ("rows over both axes, rank 2", mesh2, (64, 256), P(("data", "model"))),
      ("batch sharded, sequence replicated", mesh2, (8, 6, 256), P("data")),
  ]
  for name, mesh, shape, spec in cases:
    x, r = (jnp.asarray(rng.standard_normal(shape), jnp.bfloat16) for _ in range(2))
    w = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)
    want = jax.jit(both_ops)(x, r, w)
    xs, rs = (jax.device_put(a, NamedSharding(mesh, spec)) for a in (x, r))
    ws = jax.device_put(w, NamedSharding(mesh, P()))
    fn = jax.jit(both_ops)
    text = fn.lower(xs, rs, ws).compile().as_text()
    assert collectives(text) == [], (name, collectives(text))
    got = fn(xs, rs, ws)
    same(got, want, name)
    for out in got:
      assert out.sharding.is_equivalent_to(xs.sharding, out.ndim), (name, out.sharding)
    print("ok forward+residual, no collectives:", name)

    # Gradients are right under the same sharding (the backward is not partitioned yet).
    loss = lambda x, r, w: sum(jnp.sum(o.astype(jnp.float32) ** 2) for o in both_ops(x, r, w))
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    same(grads(xs, rs, ws), grads(x, r, w), name + " grads")
    print("ok gradients equal:", name)

  # Hidden axis sharded: correct results (today through a gather of x).
  x, r = (jnp.asarray(rng.standard_normal((16, 256)), jnp.bfloat16) for _ in range(2))
  w = jnp.asarray(rng.standard_normal(256), jnp.float32)
  xs, rs = (jax.device_put(a, NamedSharding(mesh2, P("data", "model"))) for a in (x, r))
  ws = jax.device_put(w, NamedSharding(mesh2, P("model")))
  same(jax.jit(both_ops)(xs, rs, ws), jax.jit(both_ops)(x, r, w), "hidden sharded")
  print("ok hidden sharded: results equal")

  # shard_map bodies see local rows.
  body = jax.shard_map(lambda x, w: jax_rmsnorm.rms_norm(x, w), mesh=mesh1,
                       in_specs=(P("rows"), P()), out_specs=P("rows"))
  x = jnp.asarray(rng.standard_normal((64, 128)), jnp.float32)
  w = jnp.asarray(rng.standard_normal(128), jnp.float32)
  same(jax.jit(body)(x, w), jax.jit(jax_rmsnorm.rms_norm)(x, w), "shard_map")
  print("ok shard_map body")

  # vmap over a sharded batch.
  xb = jax.device_put(jnp.asarray(rng.standard_normal((8, 4, 128)), jnp.bfloat16), NamedSharding(mesh1, P("rows")))
  same(jax.jit(jax.vmap(jax_rmsnorm.rms_norm, in_axes=(0, None)))(xb, w), jax.jit(jax_rmsnorm.rms_norm)(xb, w), "vmap")
  print("ok vmap of a sharded batch")

  # jax.export of the sharded function: serialize, deserialize, call; still no collective.
  x, r = (jnp.asarray(rng.standard_normal((64, 256)), jnp.bfloat16) for _ in range(2))
  w = jnp.asarray(rng.standard_normal(256), jnp.float32)
  row_sharding, replicated = NamedSharding(mesh1, P("rows")), NamedSharding(mesh1, P())
  fn = jax.jit(both_ops, in_shardings=(row_sharding, row_sharding, replicated),
               out_shardings=(row_sharding,) * 3)
  exported = jax.export.export(fn, disabled_checks=DISABLED)(x, r, w)
  restored = jax.export.deserialize(exported.serialize())
  xs, rs, ws = jax.device_put(x, row_sharding), jax.device_put(r, row_sharding), jax.device_put(w, replicated)
  same(restored.call(xs, rs, ws), jax.jit(both_ops)(x, r, w), "export")
  text = jax.jit(restored.call).lower(xs, rs, ws).compile().as_text()
  assert collectives(text) == [], collectives(text)
  print("ok export round trip, sharded, no collectives")


if __name__ == "__main__":
  main()
