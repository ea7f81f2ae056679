"""The primitive under JAX transformations: vmap, scan, checkpoint, a jitted Flax module."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_rmsnorm
from conftest import assert_close, on_device, random_array, reference64


def fwd_and_ref(residual):
  op = jax_rmsnorm.rms_norm_residual if residual else jax_rmsnorm.rms_norm
  ref = jax_rmsnorm.reference.rms_norm_residual if residual else jax_rmsnorm.reference.rms_norm
  return op, ref


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("x_axis,w_axis", [(0, None), (1, None), (2, None), (0, 0), (1, 0), (None, 0)])
def test_vmap(device, rng, residual, x_axis, w_axis):
  """x batched on any non-hidden axis (or not), weight shared or batched."""
  batch, shape = 4, (3, 5, 96)
  x_shape = shape if x_axis is None else shape[:x_axis] + (batch,) + shape[x_axis:]
  x = random_array(rng, x_shape, jnp.bfloat16)
  r = random_array(rng, x_shape, jnp.bfloat16)
  w = random_array(rng, (batch, 96) if w_axis == 0 else (96,), jnp.float32)
  op, ref = fwd_and_ref(residual)
  args, axes = ((x, r, w), (x_axis, x_axis, w_axis)) if residual else ((x, w), (x_axis, w_axis))
  got = jax.jit(jax.vmap(op, in_axes=axes))(*on_device(device, *args))
  want = jax.vmap(ref, in_axes=axes)(*args)
  for g, wnt in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert_close(g, np.asarray(wnt).astype(np.float64), jnp.bfloat16, seed=rng.seed)


def test_nested_vmap_outer_weight(device, rng):
  """vmap over vmap, the weight batched only by the outer one."""
  x = random_array(rng, (2, 3, 7, 64), jnp.float16)
  w = random_array(rng, (2, 64), jnp.float16)
  fn = jax.vmap(jax.vmap(jax_rmsnorm.rms_norm, in_axes=(0, None)), in_axes=(0, 0))
  got = jax.jit(fn)(*on_device(device, x, w))
  want = np.stack([reference64(x[i], None, w[i])[0] for i in range(2)])
  assert_close(got, want, jnp.float16, seed=rng.seed)


def test_scan_and_checkpoint(device, rng):
  x = random_array(rng, (6, 4, 256), jnp.bfloat16)
  r = random_array(rng, (4, 256), jnp.bfloat16)
  w = random_array(rng, (256,), jnp.float32)

  def body(carry, xi):
    y, new_r = jax_rmsnorm.rms_norm_residual(xi, carry, w)
    return new_r, y

  @jax.jit
  def run(x, r):
    return jax.lax.scan(jax.checkpoint(body), r, x)

  final, ys = run(*on_device(device, x, r))
  carry = r
  for i in range(x.shape[0]):
    y_ref, carry = reference64(x[i], carry, w)
    assert_close(ys[i], y_ref, jnp.bfloat16, seed=rng.seed)
  np.testing.assert_array_equal(np.asarray(final), carry)


def test_jitted_flax_module(device, rng):
  nn = pytest.importorskip("flax.linen")

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
      h = nn.Dense(x.shape[-1], dtype=jnp.bfloat16)(jax_rmsnorm.rms_norm(x, scale))
      y, res = jax_rmsnorm.rms_norm_residual(h, x, scale)
      return y + res

  x = random_array(rng, (2, 8, 128), jnp.bfloat16)
  with jax.default_device(device):
    model = Block()
    params = model.init(jax.random.key(0), x)
    got = jax.jit(model.apply)(params, *on_device(device, x))
  assert got.shape == x.shape and got.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(got, np.float32)).all()
