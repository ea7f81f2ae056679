"""jax.export: a jitted function using both ops (and a gradient) serializes, loads and runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_rmsnorm
from conftest import on_device, random_array

export = pytest.importorskip("jax.export")
pytest.importorskip("flatbuffers")

TARGETS = ("jax_rmsnorm_fwd_v1", "jax_rmsnorm_bwd_v1")


def test_export_round_trip(device, rng):
  x, r = (random_array(rng, (4, 96), jnp.bfloat16) for _ in range(2))
  w = random_array(rng, (96,), jnp.float32)

  def step(x, r, w):
    y, new_r = jax_rmsnorm.rms_norm_residual(x, r, w)
    dx = jax.grad(lambda x: jnp.sum(jax_rmsnorm.rms_norm(x, w).astype(jnp.float32) ** 2))(x)
    return y, new_r, dx

  platform = "cuda" if device.platform == "gpu" else device.platform
  exported = export.export(
      jax.jit(step), platforms=[platform],
      disabled_checks=[export.DisabledSafetyCheck.custom_call(t) for t in TARGETS])(x, r, w)
  text = exported.mlir_module()
  assert all(t in text for t in TARGETS)
  loaded = export.deserialize(exported.serialize())
  args = on_device(device, x, r, w)
  for got, want in zip(loaded.call(*args), jax.jit(step)(*args)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_export_dx_only_long_rows(device, rng):
  """dx alone of rows the row-tile kernel takes: the lowered call carries the scratch
  partials as a second result, and the export loads and runs with it (bit-equal)."""
  x = random_array(rng, (3, 262144), jnp.float32)
  w = random_array(rng, (262144,), jnp.float32, mean=1.0)
  dx = jax.jit(lambda x, w: jax.grad(lambda x: jnp.sum(jax_rmsnorm.rms_norm(x, w) ** 2))(x))
  platform = "cuda" if device.platform == "gpu" else device.platform
  exported = export.export(dx, platforms=[platform],
                           disabled_checks=[export.DisabledSafetyCheck.custom_call(t) for t in TARGETS])(x, w)
  assert ":2 = stablehlo.custom_call @jax_rmsnorm_bwd_v1" in exported.mlir_module()
  args = on_device(device, x, w)
  np.testing.assert_array_equal(np.asarray(export.deserialize(exported.serialize()).call(*args)),
                                np.asarray(dx(*args)))


@pytest.mark.parametrize("form", ["grad", "vmap-of-grad"])
def test_shape_polymorphic_gradient_export(device, rng, form):
  """A symbolic row (or batch) count: the forward stays the kernel, the gradient takes the
  jnp backward (the kernel's dweight partials are sized from the row count), also when
  vmap adds the symbolic batch to a backward bound for concrete per-example shapes."""
  w = random_array(rng, (64,), jnp.float32)

  def gradient(norm):
    loss = lambda x, w: jnp.sum(jnp.sin(norm(x, w)))
    if form == "grad":
      return jax.grad(loss, argnums=(0, 1))
    return jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None))

  per_example = (3, 64) if form == "vmap-of-grad" else (64,)
  platform = "cuda" if device.platform == "gpu" else device.platform
  exported = export.export(
      jax.jit(gradient(jax_rmsnorm.rms_norm)), platforms=[platform],
      disabled_checks=[export.DisabledSafetyCheck.custom_call(t) for t in jax_rmsnorm.FFI_TARGETS])(
          jax.ShapeDtypeStruct(export.symbolic_shape("b") + per_example, jnp.float32),
          jax.ShapeDtypeStruct((64,), jnp.float32))
  assert "jax_rmsnorm_fwd_v1" in exported.mlir_module()
  loaded = export.deserialize(exported.serialize())
  for batch in (1, 7):
    x = random_array(rng, (batch,) + per_example, jnp.float32)
    want = gradient(jax_rmsnorm.reference.rms_norm)(x, w)
    for got, wnt in zip(loaded.call(*on_device(device, x, w)), want):
      np.testing.assert_allclose(np.asarray(got), np.asarray(wnt), rtol=1e-5, atol=1e-5, err_msg=f"seed {rng.seed}")
