"""Gradients of rms_norm and rms_norm_residual: hand-written backward kernels against
jax.grad of a float64 reference, and autodiff under every transformation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_rmsnorm
from conftest import (assert_close, dtype_grid, grad_atol, on_device, poison, random_array,
                      reference_grads64, shape_grid)


def run_grad(device, rng, shape, x_dtype, w_dtype, residual, with_residual_cotangent=True):
  """vjp of one op on `device`, checked against jax.grad of the float64 reference."""
  x = random_array(rng, shape, x_dtype, scale=2.0, mean=0.5)
  r = random_array(rng, shape, x_dtype) if residual else None
  w = None if w_dtype is None else random_array(rng, shape[-1:], w_dtype, scale=0.5, mean=1.0)
  ct_y = random_array(rng, shape, x_dtype)
  ct_new = random_array(rng, shape, x_dtype) if residual and with_residual_cotangent else None
  (ds_ref, dw_ref), (ds_scale, dw_scale) = reference_grads64(x, r, w, ct_y, ct_new)

  op = jax_rmsnorm.rms_norm_residual if residual else jax_rmsnorm.rms_norm
  primals = [a for a in (x, r, w) if a is not None]

  @jax.jit
  def grads(primals, ct_y, ct_new):
    _, vjp = jax.vjp(op, *primals)
    if residual:
      return vjp((ct_y, ct_new if ct_new is not None else jnp.zeros_like(ct_y)))
    return vjp(ct_y)

  poison(device, 3 * x.nbytes)
  out = grads(on_device(device, *primals), *on_device(device, ct_y, ct_new if ct_new is not None else np.zeros_like(ct_y)))
  out = list(out)
  dx = out.pop(0)
  assert_close(dx, ds_ref, x_dtype, "dx", rng.seed, atol=grad_atol(ds_ref, x_dtype, ds_scale))
  if residual:
    dres = out.pop(0)
    np.testing.assert_array_equal(np.asarray(dres), np.asarray(dx))
  if w is not None:
    dw = out.pop(0)
    assert_close(dw, dw_ref, w_dtype, "dweight", rng.seed, atol=grad_atol(dw_ref, w_dtype, dw_scale))


@shape_grid
def test_grad_shapes(device, rng, hidden, leading, x_dtype, w_dtype, residual):
  run_grad(device, rng, leading + (hidden,), x_dtype, w_dtype, residual)


@dtype_grid([(2, 3, 4096), (5, 4097), (1000, 128), (3, 24576)])
def test_grad_dtype_combinations(device, rng, shape, x_dtype, w_dtype, residual):
  run_grad(device, rng, shape, x_dtype, w_dtype, residual)


def test_residual_without_new_residual_cotangent(device, rng):
  """Only y is used downstream: the new_residual cotangent is a symbolic zero."""
  x, r, w = (random_array(rng, (6, 512), jnp.float32) for _ in range(3))
  w = w[0]
  loss = lambda x, r, w: jnp.sum(jnp.sin(jax_rmsnorm.rms_norm_residual(x, r, w)[0]))
  ref = lambda x, r, w: jnp.sum(jnp.sin(jax_rmsnorm.reference.rms_norm_residual(x, r, w)[0]))
  got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*on_device(device, x, r, w))
  want = jax.grad(ref, argnums=(0, 1, 2))(x, r, w)
  for g, wnt in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(wnt), rtol=1e-4, atol=1e-5)


def test_cotangent_dtypes(device, rng):
  x = random_array(rng, (4, 256), jnp.bfloat16)
  w = random_array(rng, (256,), jnp.float32)
  loss = lambda x, w: jnp.sum(jax_rmsnorm.rms_norm(x, w).astype(jnp.float32))
  dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(*on_device(device, x, w))
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_check_grads_float32(device, rng, residual):
  """Finite differences, forward and reverse mode, in float32."""
  x = random_array(rng, (3, 40), jnp.float32)
  r = random_array(rng, (3, 40), jnp.float32)
  w = random_array(rng, (40,), jnp.float32, mean=1.0)
  with jax.default_device(device):
    if residual:
      fn, args = (lambda x, r, w: jax_rmsnorm.rms_norm_residual(x, r, w)), (x, r, w)
    else:
      fn, args = (lambda x, w: jax_rmsnorm.rms_norm(x, w)), (x, w)
    check_grads(fn, on_device(device, *args), order=1, modes=("fwd", "rev"), atol=2e-2, rtol=2e-2, eps=1e-2)


def test_forward_mode_matches_reference(device, rng):
  x = random_array(rng, (5, 64), jnp.float32)
  r = random_array(rng, (5, 64), jnp.float32)
  w = random_array(rng, (64,), jnp.float32, mean=1.0)
  tx, tr, tw = (random_array(rng, a.shape, jnp.float32) for a in (x, r, w))
  xd, rd, wd, txd, trd, twd = on_device(device, x, r, w, tx, tr, tw)
  got = jax.jvp(jax_rmsnorm.rms_norm_residual, (xd, rd, wd), (txd, trd, twd))
  want = jax.jvp(jax_rmsnorm.reference.rms_norm_residual, (x, r, w), (tx, tr, tw))
  for g, wnt in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(wnt), rtol=1e-5, atol=1e-5)
  jac = jax.jit(jax.jacfwd(jax_rmsnorm.rms_norm, argnums=(0, 1)))(xd[0], wd)
  jac_ref = jax.jacfwd(jax_rmsnorm.reference.rms_norm, argnums=(0, 1))(x[0], w)
  jac_rev = jax.jit(jax.jacrev(jax_rmsnorm.rms_norm, argnums=(0, 1)))(xd[0], wd)
  for g, r_, wnt in zip(jac, jac_rev, jac_ref):
    np.testing.assert_allclose(np.asarray(g), np.asarray(wnt), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(r_), np.asarray(wnt), rtol=1e-5, atol=1e-6)


def test_grad_runs_the_backward_ffi_call():
  x = jnp.ones((4, 256), jnp.bfloat16)
  w = jnp.ones((256,), jnp.float32)
  loss = lambda x, w: jnp.sum(jax_rmsnorm.rms_norm(x, w).astype(jnp.float32))
  text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).as_text()
  assert text.count("stablehlo.custom_call @jax_rmsnorm_bwd_v1") == 1, text
  assert "save_rstd = true" in text
  inference = jax.jit(jax_rmsnorm.rms_norm).lower(x, w).as_text()
  assert "save_rstd = false" in inference  # no rstd written without a gradient


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_gradients_are_deterministic(device, rng, residual):
  x = random_array(rng, (4096, 1024), jnp.bfloat16)
  r = random_array(rng, (4096, 1024), jnp.bfloat16)
  w = random_array(rng, (1024,), jnp.float32)
  if residual:
    loss = lambda x, r, w: jnp.sum(jax_rmsnorm.rms_norm_residual(x, r, w)[0].astype(jnp.float32) ** 2)
    args = (x, r, w)
  else:
    loss = lambda x, w: jnp.sum(jax_rmsnorm.rms_norm(x, w).astype(jnp.float32) ** 2)
    args = (x, w)
  fn = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))
  args = on_device(device, *args)
  first = [np.asarray(g) for g in fn(*args)]
  for _ in range(3):
    for a, b in zip(first, fn(*args)):
      np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize("w_axis", [None, 0])
def test_vmap_of_grad(device, rng, w_axis):
  """Per-example gradients: a shared weight still gets one dweight per example."""
  x = random_array(rng, (4, 6, 96), jnp.float32)
  w = random_array(rng, (4, 96) if w_axis == 0 else (96,), jnp.float32, mean=1.0)
  ct = random_array(rng, (6, 96), jnp.float32)
  loss = lambda op: (lambda x, w: jnp.sum(op(x, w) * ct))
  got = jax.jit(jax.vmap(jax.grad(loss(jax_rmsnorm.rms_norm), argnums=(0, 1)), in_axes=(0, w_axis)))(
      *on_device(device, x, w))
  want = jax.vmap(jax.grad(loss(jax_rmsnorm.reference.rms_norm), argnums=(0, 1)), in_axes=(0, w_axis))(x, w)
  assert got[1].shape == (4, 96)
  for g, wnt in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(wnt), rtol=1e-4, atol=1e-5)


def check_weight_groups(device, rng, groups, rows, hidden, x_dtype, w_dtype):
  """vmap over `groups` weight rows of the fused residual's vjp (with the new_residual
  cotangent), each group's dx and dweight against the float64 reference."""
  x = random_array(rng, (groups, rows, hidden), x_dtype, scale=2.0, mean=0.5)
  r = random_array(rng, (groups, rows, hidden), x_dtype)
  w = random_array(rng, (groups, hidden), w_dtype, scale=0.5, mean=1.0)
  ct_y = random_array(rng, (groups, rows, hidden), x_dtype)
  ct_new = random_array(rng, (groups, rows, hidden), x_dtype)

  def grads(x, r, w, ct_y, ct_new):
    _, vjp = jax.vjp(jax_rmsnorm.rms_norm_residual, x, r, w)
    return vjp((ct_y, ct_new))

  poison(device, 4 * x.nbytes)
  dx, dres, dw = jax.jit(jax.vmap(grads))(*on_device(device, x, r, w, ct_y, ct_new))
  np.testing.assert_array_equal(np.asarray(dres), np.asarray(dx))
  for g in range(groups):
    (ds_ref, dw_ref), (ds_scale, dw_scale) = reference_grads64(x[g], r[g], w[g], ct_y[g], ct_new[g])
    assert_close(dx[g], ds_ref, x_dtype, f"dx[{g}]", rng.seed, atol=grad_atol(ds_ref, x_dtype, ds_scale))
    assert_close(dw[g], dw_ref, w_dtype, f"dweight[{g}]", rng.seed, atol=grad_atol(dw_ref, w_dtype, dw_scale))


@pytest.mark.parametrize("hidden", [131072, 262144])
@pytest.mark.parametrize("x_dtype,w_dtype", [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.float32)],
                         ids=["bf16", "f32"])
@pytest.mark.parametrize("rows", [1, 5, 9])
def test_long_rows_with_weight_groups(device, rng, hidden, x_dtype, w_dtype, rows):
  """Rows longer than the register kernel's clusters hold: on the GPU the staged kernel
  (persistent clusters of up to 16 CTAs: bf16, and float32 at 131072), or column tiles
  over a cooperative grid (float32 at 262144), a few rows in flight at a time (so 5 and 9
  rows take several steps, some clusters or lanes idle), one dweight per weight row under
  vmap, with the residual and its cotangent."""
  check_weight_groups(device, rng, 3, rows, hidden, x_dtype, w_dtype)


@pytest.mark.parametrize("groups,rows,hidden,x_dtype", [
    (2, 5, 131076, jnp.float32), (2, 3, 262152, jnp.bfloat16), (1, 2, 1081344, jnp.float32),
    (2, 2, 1081344, jnp.float32)],
    ids=["f32-17-tiles", "bf16-17-tiles", "f32-132-tiles", "f32-132-tiles-2-weights"])
def test_long_rows_ragged_tiles(device, rng, groups, rows, hidden, x_dtype):
  """Long rows on sm_90's vector grid at the staged column tiles' edges, with the residual:
  17 tiles of 2048 accesses, the last holding one (float32 131076, bf16 262152); the most
  tiles it takes, 132 (float32 1081344: one lane); and two weight rows of those, which do
  not fit one wave of it (the row tiles instead)."""
  check_weight_groups(device, rng, groups, rows, hidden, x_dtype, jnp.float32)


def check_dx_only(device, rng, shape, x_dtype, weight, residual, vmapped=None):
  """Gradients of x (and residual) alone: no dweight, so no partials for dweight; the
  row-tile kernel still gets them as its exchange scratch. `weight`: None, or "fixed" (a
  weight nobody differentiates). `vmapped`: None, "x" (examples share the weight) or
  "both" (one weight row per example)."""
  batch = (2,) if vmapped else ()
  x = random_array(rng, batch + shape, x_dtype, scale=2.0, mean=0.5)
  r = random_array(rng, batch + shape, x_dtype) if residual else None
  w_shape = (batch if vmapped == "both" else ()) + shape[-1:]
  w = None if weight is None else random_array(rng, w_shape, jnp.float32, scale=0.5, mean=1.0)
  ct_y = random_array(rng, batch + shape, x_dtype)

  def grads(x, r, w, ct_y):
    if residual:
      op = lambda x, r: jax_rmsnorm.rms_norm_residual(x, r, w)
      _, vjp = jax.vjp(op, x, r)
      return vjp((ct_y, jnp.zeros_like(ct_y)))[0]
    _, vjp = jax.vjp(lambda x: jax_rmsnorm.rms_norm(x, w), x)
    return vjp(ct_y)[0]

  if vmapped:
    fn = jax.vmap(grads, in_axes=(0, 0 if residual else None, 0 if vmapped == "both" else None, 0))
  else:
    fn = grads
  poison(device, 3 * x.nbytes)
  dx = np.asarray(jax.jit(fn)(*on_device(device, x, r, w, ct_y)))
  for b in range(batch[0] if batch else 1):
    pick = (lambda a: a[b]) if batch else (lambda a: a)
    w_b = None if w is None else (pick(w) if vmapped == "both" else w)
    (ds_ref, _), (ds_scale, _) = reference_grads64(pick(x), None if r is None else pick(r), w_b, pick(ct_y))
    assert_close(pick(dx), ds_ref, x_dtype, f"dx[{b}]", rng.seed, atol=grad_atol(ds_ref, x_dtype, ds_scale))


@pytest.mark.parametrize("shape,x_dtype,weight,residual,vmapped", [
    ((3, 262144), jnp.float32, None, False, None),
    ((5, 262144), jnp.float32, "fixed", True, None),
    ((2, 524288), jnp.bfloat16, "fixed", False, None),
    ((3, 262144), jnp.float32, "fixed", False, "x"),
    ((2, 262144), jnp.float32, "fixed", True, "both"),
    ((4, 4096), jnp.bfloat16, "fixed", False, "both"),
], ids=["f32-no-weight", "f32-residual", "bf16-524288", "f32-vmap-x", "f32-vmap-both", "bf16-4096-vmap"])
def test_dx_only(device, rng, shape, x_dtype, weight, residual, vmapped):
  """Rows the row-tile kernel takes on the GPU (float32 past 131072, bf16 past 262144),
  whose dx-only backward used to stream (14x slower), and a short row that needs no
  scratch; under vmap the scratch follows the weight's batch."""
  check_dx_only(device, rng, shape, x_dtype, weight, residual, vmapped)


def test_dx_only_hessian_vector_product(device, rng):
  """Forward over the dx-only backward of long rows (its scratch partials get a zero
  tangent), against the float32 jnp reference's."""
  x = random_array(rng, (2, 262144), jnp.float32)
  v = random_array(rng, (2, 262144), jnp.float32)
  w = random_array(rng, (262144,), jnp.float32, mean=1.0)
  hvp = lambda op: (lambda x, v: jax.jvp(jax.grad(lambda x: jnp.sum(op(x, w) ** 2)), (x,), (v,))[1])
  got = jax.jit(hvp(jax_rmsnorm.rms_norm))(*on_device(device, x, v))
  want = hvp(jax_rmsnorm.reference.rms_norm)(x, v)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4 * float(np.max(np.abs(want))))


@pytest.mark.parametrize("hidden,itemsize,expected", [
    (262144, 4, True), (131072, 4, False), (524288, 2, True), (262144, 2, False), (4096, 2, False),
    (131076, 4, True)])
def test_dx_only_scratch_partials(hidden, itemsize, expected):
  """Which backwards without dweight take the partials (device-independent), and that the
  lowered call then has them as a second result."""
  from jax_rmsnorm import _ffi
  assert _ffi.bwd_exchanges_in_partials(hidden, itemsize) == expected
  dtype = jnp.float32 if itemsize == 4 else jnp.bfloat16
  x = jax.ShapeDtypeStruct((2, hidden), dtype)
  w = jax.ShapeDtypeStruct((hidden,), jnp.float32)
  dx = lambda x, w: jax.grad(lambda x: jnp.sum(jax_rmsnorm.rms_norm(x, w).astype(jnp.float32)))(x)
  text = jax.jit(dx).lower(x, w).as_text()
  calls = [line for line in text.splitlines() if "stablehlo.custom_call @jax_rmsnorm_bwd_v1" in line]
  assert len(calls) == 1, text
  assert (":2 = stablehlo.custom_call" in calls[0]) == expected, calls[0]


@pytest.mark.parametrize("hidden", [4096, 2048, 136])
@pytest.mark.parametrize("x_dtype,w_dtype", [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.float32),
                                             (jnp.float16, jnp.bfloat16)], ids=["bf16", "f32", "f16-bf16"])
@pytest.mark.parametrize("rows", [1, 8, 33, 64])
def test_decode_rows_with_weight_groups(device, rng, hidden, x_dtype, w_dtype, rows):
  """Decode sizes: on the GPU the few-rows kernel (one cluster of up to 16 CTAs holds a
  weight row's rows, each CTA a column slice; 33 and 64 rows give a thread several rows,
  33 leaves row slots empty; at 136 float32 the second CTA's slice is mostly past the
  row), or the register kernel where the rows do not fit one cluster (float32 at 4096
  from 33 rows): dx and one dweight per weight row under vmap, with the residual."""
  check_weight_groups(device, rng, 2, rows, hidden, x_dtype, w_dtype)


def test_weight_groups_in_waves(device, rng):
  """12 weight rows of 4 x 65536: the CPU backward runs 8 groups at once (their chunks'
  double sums fill its 16 MB), then the other 4; on the GPU the long-row kernels."""
  check_weight_groups(device, rng, 12, 4, 65536, jnp.bfloat16, jnp.float32)


@pytest.mark.parametrize("rows,hidden", [(2048, 4096), (2500, 3072), (2048, 2048)])
@pytest.mark.parametrize("x_dtype,w_dtype", [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.float32),
                                             (jnp.float16, jnp.bfloat16)], ids=["bf16", "f32", "f16-bf16"])
def test_mid_rows_with_weight_groups(device, rng, rows, hidden, x_dtype, w_dtype):
  """Rows of 257-512 16-byte accesses (4096 and 3072 bf16 or f16, 2048 float32) with few
  row steps a CTA: on the GPU the staged kernel in 128-thread CTAs, four a SM (2500 rows
  leave the last step part empty; 3072 leaves a quarter of each CTA's slice past the row);
  the other pairs run the register kernel or the 256-thread staged one. One dweight per
  weight row under vmap, with the residual and its cotangent."""
  check_weight_groups(device, rng, 2, rows, hidden, x_dtype, w_dtype)


@pytest.mark.parametrize("shape", [(1030, 4096), (2, 1100, 4096), (3000, 4000)])
def test_mid_rows_plain(device, rng, shape):
  """The same kernel without the residual term (its other variant), one weight for all
  rows; 1030 rows: two steps for 502 of the 528 CTAs, one for the other 26."""
  run_grad(device, rng, shape, jnp.bfloat16, jnp.float32, residual=False)


@pytest.mark.parametrize("shape,x_dtype,residual", [
    ((8449, 4096), jnp.bfloat16, True), ((33797, 1024), jnp.float16, False), ((8449, 2048), jnp.float32, False)],
    ids=["bf16-4096-residual", "f16-1024", "f32-2048"])
def test_many_row_steps(device, rng, shape, x_dtype, residual):
  """17 row groups a CTA for the register kernel, the last one part empty: on a GPU of less
  than 4 TB/s (the H100) its ring has one stage there (fit_bwd_stages_to_device), two on the
  H200."""
  run_grad(device, rng, shape, x_dtype, jnp.float32, residual)


@pytest.mark.parametrize("rows,hidden,itemsize,ctas", [
    (1024, 4096, 2, 528), (8448, 4096, 2, 528), (2500, 3072, 2, 528), (2048, 2048, 4, 528),
    (1023, 4096, 2, 264), (8449, 4096, 2, 264), (2048, 2048, 2, 264), (2048, 8192, 2, 264),
    (64, 4096, 2, 32)])
def test_mid_rows_partial_count(rows, hidden, itemsize, ctas):
  """The partial rows the JAX primitive sizes for the backward (device-independent): 528
  (four 128-thread CTAs a SM of a 132-SM device) exactly where the chooser takes the staged
  kernel for rows of 257-512 accesses, from 1024 rows to 16 steps a CTA; else as before."""
  from jax_rmsnorm import _ffi
  assert _ffi.bwd_ctas_per_weight_row(rows, hidden, itemsize) == ctas


def test_grad_of_scan_with_checkpoint(device, rng):
  x = random_array(rng, (5, 8, 128), jnp.float32)
  r0 = random_array(rng, (8, 128), jnp.float32)
  w = random_array(rng, (128,), jnp.float32, mean=1.0)

  def make_loss(op):
    def body(carry, xi):
      y, new_r = op(xi, carry[0], carry[1])
      return (new_r, carry[1]), jnp.sum(jnp.tanh(y))

    def loss(x, r0, w):
      _, ys = jax.lax.scan(jax.checkpoint(body), (r0, w), x)
      return jnp.sum(ys)
    return loss

  got = jax.jit(jax.value_and_grad(make_loss(jax_rmsnorm.rms_norm_residual), argnums=(0, 1, 2)))(
      *on_device(device, x, r0, w))
  want = jax.value_and_grad(make_loss(jax_rmsnorm.reference.rms_norm_residual), argnums=(0, 1, 2))(x, r0, w)
  for g, wnt in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(wnt), rtol=1e-4, atol=1e-5)


def test_flax_training_follows_reference(device):
  """100 optax steps of a small Flax model: the same loss curve with either op."""
  nn = pytest.importorskip("flax.linen")
  optax = pytest.importorskip("optax")

  class Model(nn.Module):
    norm: object

    @nn.compact
    def __call__(self, x):
      h = x
      for _ in range(2):
        scale = self.param(f"scale{_}", nn.initializers.ones, (h.shape[-1],), jnp.float32)
        residual = nn.Dense(h.shape[-1])(jax.nn.gelu(h))
        h, _unused = (self.norm.rms_norm_residual(residual, h, scale))
      return nn.Dense(1)(self.norm.rms_norm(h))

  data_rng = np.random.default_rng(0)
  x = jax.device_put(data_rng.standard_normal((256, 64)).astype(np.float32), device)
  target = jax.device_put(np.sin(np.asarray(x)).sum(-1, keepdims=True).astype(np.float32), device)

  def train(norm_module):
    model = Model(norm_module)
    with jax.default_device(device):
      params = model.init(jax.random.key(0), x)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
      loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - target) ** 2))(params)
      updates, opt_state = tx.update(grads, opt_state)
      return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(100):
      params, opt_state, loss = step(params, opt_state)
      losses.append(float(loss))
    return np.array(losses)

  ours = train(jax_rmsnorm)
  ref = train(jax_rmsnorm.reference)
  assert ours[-1] < 0.5 * ours[0]  # it trains
  # Adam amplifies float32 rounding differences step by step; a wrong gradient would
  # part the curves by far more than this within a few steps.
  np.testing.assert_allclose(ours, ref, rtol=2e-2, atol=1e-4)


def _norm64(s, weight, eps=1e-6):
  """The op in jnp, for float64 inputs under enable_x64: the second derivatives' truth."""
  return s * jax.lax.rsqrt(jnp.mean(s * s, axis=-1, keepdims=True) + eps) * weight


def _as64(*arrays):
  return [jnp.asarray(a.astype(np.float64)) for a in arrays]


def _loss64(x, residual, weight):
  """sum(sin(y)) (+ sum(cos(new_residual))) in float64."""
  s = x if residual is None else x + residual
  return jnp.sum(jnp.sin(_norm64(s, weight))) + (0.0 if residual is None else jnp.sum(jnp.cos(s)))


def _loss(x, residual, weight):
  if residual is None:
    return jnp.sum(jnp.sin(jax_rmsnorm.rms_norm(x, weight).astype(jnp.float32)))
  y, s = jax_rmsnorm.rms_norm_residual(x, residual, weight)
  return jnp.sum(jnp.sin(y.astype(jnp.float32))) + jnp.sum(jnp.cos(s.astype(jnp.float32)))


def _assert_blocks_close(got, want, blocks, seed):
  """Every block of a Hessian (a tree of float32 arrays) against float64, to 2e-4 relative
  and 2e-5 of the largest entry."""
  got, want = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(got) == len(want) == blocks
  scale = max(float(np.max(np.abs(np.asarray(a)))) for a in want)
  for i, (g, wnt) in enumerate(zip(got, want)):
    g, wnt = np.asarray(g), np.asarray(wnt)
    assert g.shape == wnt.shape and g.dtype == np.float32, (i, g.shape, g.dtype)
    assert np.isfinite(g).all(), f"block {i}: non-finite entries"
    np.testing.assert_allclose(g, wnt, rtol=2e-4, atol=2e-5 * scale, err_msg=f"block {i} (seed {seed})")


SECOND_ORDER = {
    "hessian": lambda f, n: jax.hessian(f, argnums=tuple(range(n))),  # forward over reverse
    "rev-rev": lambda f, n: jax.jacrev(jax.jacrev(f, argnums=tuple(range(n))), argnums=tuple(range(n))),
    "fwd-fwd": lambda f, n: jax.jacfwd(jax.jacfwd(f, argnums=tuple(range(n))), argnums=tuple(range(n))),
    "rev-fwd": lambda f, n: jax.jacrev(jax.jacfwd(f, argnums=tuple(range(n))), argnums=tuple(range(n))),
}


@pytest.mark.parametrize("order", list(SECOND_ORDER))
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_second_derivatives(device, rng, order, residual):
  """Every composition of forward and reverse mode, against float64 jnp: the full
  Hessian over x, (residual) and weight, so every cross term is checked."""
  x = random_array(rng, (2, 3, 24), jnp.float32, scale=2.0, mean=0.5)
  r = random_array(rng, x.shape, jnp.float32) if residual else None
  w = random_array(rng, (24,), jnp.float32, scale=0.5, mean=1.0)
  args = [a for a in (x, r, w) if a is not None]
  fn = (lambda x, r, w: _loss(x, r, w)) if residual else (lambda x, w: _loss(x, None, w))
  fn64 = (lambda x, r, w: _loss64(x, r, w)) if residual else (lambda x, w: _loss64(x, None, w))
  got = jax.jit(SECOND_ORDER[order](fn, len(args)))(*on_device(device, *args))
  with jax.enable_x64(True):
    want = SECOND_ORDER[order](fn64, len(args))(*_as64(*args))
  _assert_blocks_close(got, want, len(args) ** 2, rng.seed)


def test_gradient_penalty_runs_the_backward_kernel(device, rng):
  """grad of a loss that contains a gradient (reverse over reverse, the primal backward
  used): the backward's values come from its FFI call, its derivative from jnp."""
  x = random_array(rng, (4, 3, 40), jnp.float32)
  w = random_array(rng, (40,), jnp.float32, mean=1.0)

  def penalized(norm):
    def loss(x, w):
      inner = lambda x: jnp.sum(jnp.sin(norm(x, w)))
      g = jax.grad(inner)(x)
      return inner(x) + jnp.sum(g * g)
    return jax.grad(loss, argnums=(0, 1))

  jaxpr = str(jax.make_jaxpr(penalized(jax_rmsnorm.rms_norm))(x, w))
  assert "jax_rmsnorm_bwd" in jaxpr and "jax_rmsnorm_fwd" in jaxpr
  got = jax.jit(penalized(jax_rmsnorm.rms_norm))(*on_device(device, x, w))
  with jax.enable_x64(True):
    want = penalized(_norm64)(*_as64(x, w))
  for g, wnt in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(wnt), rtol=1e-4,
                               atol=1e-5 * float(np.max(np.abs(wnt))), err_msg=f"seed {rng.seed}")


@pytest.mark.parametrize("x_dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_hessian_vector_product_half_precision(device, rng, x_dtype):
  """jvp of grad at 16-bit x and a float32 weight, under vmap over a batch of inputs: the
  gradient is rounded to x's dtype once, its derivative is float32 jnp rounded to it."""
  x = random_array(rng, (3, 5, 64), x_dtype, scale=2.0, mean=0.5)
  v = random_array(rng, x.shape, x_dtype)
  w = random_array(rng, (64,), jnp.float32, scale=0.5, mean=1.0)

  def hvp(norm):  # norm(x): y of the op, summed in float32 or wider
    grad = jax.grad(lambda x: jnp.sum(jnp.sin(norm(x))))
    return jax.vmap(lambda x, v: jax.jvp(grad, (x,), (v,))[1])

  got = np.asarray(jax.jit(hvp(lambda x: jax_rmsnorm.rms_norm(x, w).astype(jnp.float32)))(*on_device(device, x, v)))
  assert got.dtype == np.dtype(x_dtype)
  with jax.enable_x64(True):
    (w64,) = _as64(w)
    want = np.asarray(hvp(lambda x: _norm64(x, w64))(*_as64(x, v)))
  # The output's rounding to x's dtype, and float32 sums of terms as large as the result.
  assert_close(got, want, x_dtype, "hvp", rng.seed, atol=2e-2 * float(np.max(np.abs(want))))


def test_vmapped_hessian_per_batch_weights(device, rng):
  """vmap of the Hessian of the residual op, each batch element its own weight (the
  backward's batching rule under its JVP), against float64 jnp."""
  x, r = (random_array(rng, (4, 3, 16), jnp.float32) for _ in range(2))
  w = random_array(rng, (4, 16), jnp.float32, scale=0.5, mean=1.0)
  hessian = lambda loss: jax.vmap(jax.hessian(loss, argnums=(0, 1, 2)))
  got = jax.jit(hessian(_loss))(*on_device(device, x, r, w))
  with jax.enable_x64(True):
    want = hessian(_loss64)(*_as64(x, r, w))
  _assert_blocks_close(got, want, 9, rng.seed)
