"""The forward's options: y in float32 from bf16/f16 x or in bf16/f16 from float32 x
(`out_dtype`), and the HF/Llama
order (`round_normalized`: the normalized x rounded to x's dtype before the weight),
against a float64 reference, with gradients, bad values, and the FFI target each uses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_rmsnorm
from conftest import TOLERANCE, assert_close, on_device, poison, random_array

# Scalar accesses, the decode split, the register kernel with several rows a CTA, long
# rows (staged on sm_90, or a cluster), the longest staged float32 rows.
SHAPES = [(3, 257), (2, 4, 4096), (300, 1024), (1, 65536), (2, 262144)]

# (x dtype, out_dtype): every pair out_dtype admits (None and x's own lower alike, as v1).
OUTPUTS = [(jnp.bfloat16, None), (jnp.bfloat16, jnp.float32), (jnp.float16, None),
           (jnp.float16, jnp.float32), (jnp.float32, None), (jnp.float32, jnp.float32),
           (jnp.float32, jnp.bfloat16), (jnp.float32, jnp.float16)]
OUTPUT_IDS = ["bf16", "bf16-y-f32", "f16", "f16-y-f32", "f32", "f32-y-f32", "f32-y-bf16", "f32-y-f16"]


def reference64(x, residual, weight, out_dtype, round_normalized, eps=1e-6):
  s = np.asarray(x).astype(np.float64)
  if residual is not None:
    s = (s + np.asarray(residual).astype(np.float64)).astype(np.asarray(x).dtype).astype(np.float64)
  n = s / np.sqrt(np.mean(s * s, axis=-1, keepdims=True) + eps)
  if round_normalized:
    n = n.astype(np.asarray(x).dtype).astype(np.float64)
  return n if weight is None else n * np.asarray(weight).astype(np.float64)


@pytest.mark.parametrize("round_normalized", [False, True], ids=["one-rounding", "hf-order"])
@pytest.mark.parametrize("x_dtype,out_dtype", OUTPUTS, ids=OUTPUT_IDS)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_options(device, rng, shape, residual, x_dtype, out_dtype, round_normalized):
  x = random_array(rng, shape, x_dtype, scale=3.0)
  r = random_array(rng, shape, x_dtype) if residual else None
  w = random_array(rng, shape[-1:], jnp.float32)
  xd, rd, wd = on_device(device, x, r, w)
  kwargs = dict(out_dtype=out_dtype, round_normalized=round_normalized)
  poison(device, 3 * x.nbytes)
  if residual:
    y, new_r = jax.jit(lambda x, r, w: jax_rmsnorm.rms_norm_residual(x, r, w, **kwargs))(xd, rd, wd)
    assert new_r.dtype == x_dtype
  else:
    y = jax.jit(lambda x, w: jax_rmsnorm.rms_norm(x, w, **kwargs))(xd, wd)
  want_dtype = jnp.dtype(out_dtype or x_dtype)
  assert y.dtype == want_dtype
  want = reference64(x, r, w, out_dtype, round_normalized)
  if round_normalized:
    # n is rounded to x's dtype on the way: computed in float32 here and in float64 there,
    # it may land one ulp of x's dtype apart, and y is rounded again: two ulps (of the
    # wider of the two roundings).
    rtol, atol = max(TOLERANCE[np.dtype(x_dtype)], TOLERANCE[np.dtype(want_dtype)])
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=2 * rtol, atol=atol,
                               err_msg=f"seed {rng.seed}")
    assert np.all(np.isfinite(np.asarray(y, np.float32)))
  else:
    assert_close(y, want, want_dtype, seed=rng.seed)


@pytest.mark.parametrize("round_normalized", [False, True], ids=["one-rounding", "hf-order"])
@pytest.mark.parametrize("x_dtype,out_dtype", [o for o in OUTPUTS if o[0] != jnp.float16],
                         ids=[i for o, i in zip(OUTPUTS, OUTPUT_IDS) if o[0] != jnp.float16])
def test_gradients_with_options(device, rng, x_dtype, out_dtype, round_normalized):
  """Gradients against jax.grad of the jnp reference with the same options (the HF order's
  rounding passes gradients straight through in both)."""
  x, r = random_array(rng, (6, 1024), x_dtype), random_array(rng, (6, 1024), x_dtype)
  w, ct = random_array(rng, (1024,), jnp.float32), random_array(rng, (6, 1024), jnp.float32)
  xd, rd, wd, ctd = on_device(device, x, r, w, ct)
  kwargs = dict(out_dtype=out_dtype, round_normalized=round_normalized)

  def loss(op):
    return lambda x, r, w: jnp.sum(op(x, r, w, **kwargs)[0].astype(jnp.float32) * ctd)

  got = jax.jit(jax.grad(loss(jax_rmsnorm.rms_norm_residual), argnums=(0, 1, 2)))(xd, rd, wd)
  want = jax.jit(jax.grad(loss(jax_rmsnorm.reference.rms_norm_residual), argnums=(0, 1, 2)))(xd, rd, wd)
  # bf16: the two round dy and n at different points (one bf16 ulp of the largest term).
  tol = 2.0 ** -6 if x_dtype == jnp.bfloat16 else 1e-5
  for g, v in zip(got, want):
    g32, v32 = np.asarray(g, np.float32), np.asarray(v, np.float32)
    assert g.dtype == v.dtype and np.all(np.isfinite(g32))
    np.testing.assert_allclose(g32, v32, rtol=tol, atol=tol * float(np.max(np.abs(v32))))


def hf_dweight64(x, residual, ct, x_dtype, eps=1e-6):
  """The HF order's dweight in float64: the sum over rows of dy * round_x(n), the exact
  derivative of round_x(n) * weight, and per column how far it may be off where n lies
  within float32's error of a rounding boundary of x's dtype (the kernels compute n in
  float32, and either neighbour is then right)."""
  s = np.asarray(x).astype(np.float64)
  if residual is not None:
    s = (s + np.asarray(residual).astype(np.float64)).astype(x_dtype).astype(np.float64)
  n = s / np.sqrt(np.mean(s * s, axis=-1, keepdims=True) + eps)
  up, down = ((n * (1 + d)).astype(x_dtype).astype(np.float64) for d in (1e-6, -1e-6))
  ct = np.asarray(ct).astype(np.float64)
  lead = tuple(range(n.ndim - 1))
  return (np.sum(ct * n.astype(x_dtype).astype(np.float64), axis=lead),
          np.sum(np.abs(ct) * np.abs(up - down), axis=lead))


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("x_dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("path,shape", [
    ("kernel", (3, 257)), ("kernel", (8, 4096)), ("kernel", (300, 1024)), ("kernel", (2, 65536)),
    ("jnp", (64, 1024)), ("vmap", (3, 40, 1024))])
def test_hf_order_dweight_is_its_exact_derivative(device, rng, path, shape, x_dtype, residual):
  """dweight of y = round_x(n) * w sums dy * round_x(n): through the backward kernel (y in
  x's dtype), the jnp backward (a float32 y: its cotangent is float32) and per-example
  weights under vmap. Summing the unrounded n instead is off by about 1e-3 of the largest
  dweight in bf16 (3e-4 in f16), past the 3e-5 this allows."""
  out_dtype = jnp.float32 if path == "jnp" else None
  x = random_array(rng, shape, x_dtype, scale=2.0, mean=0.3)
  r = random_array(rng, shape, x_dtype) if residual else None
  w_shape = shape[:1] + shape[-1:] if path == "vmap" else shape[-1:]
  w = random_array(rng, w_shape, jnp.float32, scale=0.5, mean=1.0)
  ct = random_array(rng, shape, out_dtype or x_dtype)
  kwargs = dict(out_dtype=out_dtype, round_normalized=True)

  def dweight(x, r, w, ct):
    if residual:
      return jax.vjp(lambda w: jax_rmsnorm.rms_norm_residual(x, r, w, **kwargs)[0], w)[1](ct)[0]
    return jax.vjp(lambda w: jax_rmsnorm.rms_norm(x, w, **kwargs), w)[1](ct)[0]

  fn = jax.vmap(dweight) if path == "vmap" else dweight
  poison(device, 4 * x.nbytes)
  got = np.asarray(jax.jit(fn)(*on_device(device, x, r, w, ct)))
  groups = range(shape[0]) if path == "vmap" else [slice(None)]
  for g in groups:
    want, ambiguity = hf_dweight64(x[g], None if r is None else r[g], ct[g], x_dtype)
    err = np.abs(got[g].astype(np.float64) - want)
    allowed = 3e-5 * np.max(np.abs(want)) + ambiguity
    assert got.dtype == np.float32 and np.isfinite(got[g]).all()
    assert np.all(err <= allowed), (
        f"seed {rng.seed}: {int(np.sum(err > allowed))} of {err.size} columns off, worst "
        f"{np.max(err / np.max(np.abs(want))):.2e} of max |dweight|")


def test_targets():
  """v1 lowers as before; only calls with an option use v2."""
  x, w = jnp.ones((2, 8), jnp.bfloat16), jnp.ones((8,), jnp.float32)
  text = lambda **kw: jax.jit(lambda x, w: jax_rmsnorm.rms_norm(x, w, **kw)).lower(x, w).as_text()
  assert "jax_rmsnorm_fwd_v1" in text() and "jax_rmsnorm_fwd_v2" not in text()
  assert "jax_rmsnorm_fwd_v2" in text(out_dtype=jnp.float32)
  assert "jax_rmsnorm_fwd_v2" in text(round_normalized=True)
  assert "jax_rmsnorm_fwd_v1" in text(out_dtype=jnp.bfloat16)  # y in x's dtype anyway
  narrow = jax.jit(lambda x, w: jax_rmsnorm.rms_norm(x, w, out_dtype=jnp.bfloat16)).lower(
      jnp.ones((2, 8), jnp.float32), w)
  assert "jax_rmsnorm_fwd_v2" in narrow.as_text()
  # One pass: the call writes the bf16 y itself, no convert after it.
  assert "convert" not in narrow.as_text() and narrow.out_info.dtype == jnp.bfloat16


def test_backward_targets():
  """The backward lowers to v2 only for the HF order's dweight of 16-bit rows (float32 rows
  round nothing; without a weight, or with its gradient unused, there is no dweight)."""
  def text(x, argnums, **kw):
    loss = lambda x, w: jnp.sum(jax_rmsnorm.rms_norm(x, w, **kw).astype(jnp.float32))
    return jax.jit(jax.grad(loss, argnums=argnums)).lower(x, jnp.ones((8,), jnp.float32)).as_text()
  bf16, f32 = jnp.ones((2, 8), jnp.bfloat16), jnp.ones((2, 8), jnp.float32)
  assert "jax_rmsnorm_bwd_v2" in text(bf16, (0, 1), round_normalized=True)
  for x, argnums, hf in [(bf16, (0, 1), False), (f32, (0, 1), True), (bf16, 0, True)]:
    lowered = text(x, argnums, round_normalized=hf)
    assert "jax_rmsnorm_bwd_v1" in lowered and "jax_rmsnorm_bwd_v2" not in lowered, (x.dtype, argnums, hf)


def test_hf_order_weight_tangent_is_exact(device, rng):
  """Forward mode in the weight: y = round_x(n) * w has tangent round_x(n) * dw (a float32 y,
  so that y's own rounding does not hide n's). Where n lies within float32's error of a
  rounding boundary of bf16, either neighbour is right (about 1 seed in 100 has one)."""
  x = random_array(rng, (16, 1024), jnp.bfloat16, scale=2.0)
  w, dw = (random_array(rng, (1024,), jnp.float32, mean=m) for m in (1.0, 0.0))
  xd, wd, dwd = on_device(device, x, w, dw)
  _, tangent = jax.jit(lambda w, dw: jax.jvp(
      lambda w: jax_rmsnorm.rms_norm(xd, w, out_dtype=jnp.float32, round_normalized=True), (w,), (dw,)))(wd, dwd)
  s = x.astype(np.float64)
  n = s / np.sqrt(np.mean(s * s, axis=-1, keepdims=True) + 1e-6)
  up, down = ((n * (1 + d)).astype(x.dtype).astype(np.float64) * dw.astype(np.float64) for d in (1e-6, -1e-6))
  got = np.asarray(tangent).astype(np.float64)
  assert_close(tangent, np.where(np.abs(got - up) <= np.abs(got - down), up, down), jnp.float32, "tangent", rng.seed)


def test_out_dtype_reads_dtypes_as_jax_does():
  """A Python `float` is float32 (x64 off), as everywhere in JAX."""
  assert jax_rmsnorm.rms_norm(jnp.ones((2, 8), jnp.bfloat16), out_dtype=float).dtype == jnp.float32


@pytest.mark.parametrize("kwargs,error", [
    (dict(out_dtype=jnp.float16), ValueError),  # bf16 x: only its own dtype or float32
    (dict(out_dtype=jnp.int32), ValueError),
    (dict(out_dtype="no such dtype"), TypeError),
    (dict(round_normalized=1), TypeError),
    (dict(round_normalized=None), TypeError),
])
@pytest.mark.parametrize("op", ["kernel", "reference"])
def test_bad_option_values(op, kwargs, error):
  fn = jax_rmsnorm.rms_norm if op == "kernel" else jax_rmsnorm.reference.rms_norm
  name = next(iter(kwargs))
  with pytest.raises(error, match=name):
    fn(jnp.ones((2, 8), jnp.bfloat16), **kwargs)


@pytest.mark.parametrize("out_dtype", [jnp.float32, None], ids=["y-f32", "y-like-x"])
@pytest.mark.parametrize("x_dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_hf_order_is_taken(device, rng, x_dtype, out_dtype):
  """The HF order differs from one rounding by half an ulp of x's dtype, inside the
  tolerances above; counting equal elements shows it: ours matches the jnp reference's HF
  order (both float32 arithmetic) and not its one-rounding result (with y in x's dtype
  the two roundings still differ in about a quarter of the elements)."""
  x, w = random_array(rng, (8, 2048), x_dtype, scale=3.0), random_array(rng, (2048,), jnp.float32)
  xd, wd = on_device(device, x, w)
  run = lambda f, hf: np.asarray(
      jax.jit(lambda x, w: f(x, w, out_dtype=out_dtype, round_normalized=hf))(xd, wd), np.float32)
  ours = run(jax_rmsnorm.rms_norm, True)
  hf, plain = run(jax_rmsnorm.reference.rms_norm, True), run(jax_rmsnorm.reference.rms_norm, False)
  assert np.mean(ours == hf) > 0.99, np.mean(ours == hf)  # rounding boundaries aside
  assert np.mean(ours != plain) > (0.5 if out_dtype else 0.1), np.mean(ours != plain)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_float32_y_gradients_are_float32_exact(device, rng, residual):
  """A float32 y's cotangent is not rounded to x's dtype: dweight (float32) matches a
  float64 computation to float32 precision, relative to the terms it sums. (Cotangents
  close to 1 show it: rounded to bf16 most become exactly 1.)"""
  shape = (4, 256)
  x = random_array(rng, shape, jnp.bfloat16, scale=3.0)
  r = random_array(rng, shape, jnp.bfloat16)
  w = random_array(rng, shape[-1:], jnp.float32)
  ct = (1.0 + 1e-3 * rng.standard_normal(shape)).astype(np.float32)
  xd, rd, wd, ctd = on_device(device, x, r, w, ct)

  # With the residual, new_residual's cotangent too (it adds to dx).
  ct_new = random_array(rng, shape, jnp.bfloat16)
  (ct_newd,) = on_device(device, ct_new)

  def loss(x, r, w):
    if not residual:
      return jnp.sum(jax_rmsnorm.rms_norm(x, w, out_dtype=jnp.float32) * ctd)
    y, new_r = jax_rmsnorm.rms_norm_residual(x, r, w, out_dtype=jnp.float32)
    return jnp.sum(y * ctd) + jnp.sum((new_r * ct_newd).astype(jnp.float32))

  dx, dw = jax.jit(jax.grad(loss, argnums=(0, 2)))(xd, rd, wd)
  s = np.asarray(x, np.float64)
  if residual:
    s = (s + np.asarray(r, np.float64)).astype(jnp.bfloat16).astype(np.float64)
  rstd = 1.0 / np.sqrt(np.mean(s * s, -1, keepdims=True) + 1e-6)
  n, g = s * rstd, ct.astype(np.float64)
  gw = g * np.asarray(w, np.float64)
  dx_want = rstd * (gw - n * np.mean(gw * n, -1, keepdims=True))
  if residual:
    dx_want = dx_want + np.asarray(ct_new, np.float64)
  dw_want, dw_terms = np.sum(g * n, 0), np.sum(np.abs(g * n), 0)
  assert dw.dtype == jnp.float32 and dx.dtype == jnp.bfloat16
  assert np.all(np.abs(np.asarray(dw, np.float64) - dw_want) <= 1e-5 * dw_terms), \
      (np.max(np.abs(np.asarray(dw, np.float64) - dw_want) / dw_terms), rng.seed)
  assert_close(dx, dx_want, jnp.bfloat16, what="dx", seed=rng.seed)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_rounded_is_a_cast_xla_keeps(device, rng, dtype):
  """reference.rounded (the HF order's rounding in the reference and the hidden-sharded
  path) equals a cast to dtype and back, ties, subnormals, overflow, inf and NaN included,
  compiled for the device: XLA on GPU drops a plain cast round trip (excess precision)."""
  info = jnp.finfo(dtype)
  tiny = float(info.smallest_subnormal)
  special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, float(info.max) * 1.001, 1 + 2.0 ** -8,
                      1 + 3 * 2.0 ** -8, tiny * 0.5, tiny * 1.5, tiny * 2.5, -tiny * 0.49], np.float32)
  values = np.concatenate([special] + [rng.standard_normal(4096).astype(np.float32) * scale
                                       for scale in (1.0, 1e-3, 1e-5, 1e-7, 1e4)])
  (vd,) = on_device(device, values)
  got = np.asarray(jax.jit(lambda v: jax_rmsnorm.reference.rounded(v, dtype))(vd))
  with np.errstate(over="ignore"):
    want = values.astype(dtype).astype(np.float32)
  same = (got == want) & (np.signbit(got) == np.signbit(want)) | (np.isnan(got) & np.isnan(want))
  assert same.all(), (values[~same], got[~same], want[~same])
  # Not the identity: most values change.
  assert np.mean(got != values) > 0.9
  assert float(jax.grad(lambda v: jax_rmsnorm.reference.rounded(v, dtype).sum())(vd)[-1]) == 1.0


def test_float32_y_gradients_with_batched_weights(device, rng):
  """vmap over weights (one per batch element) with a float32 y: each weight's gradient
  sums over its own rows only, as jax.grad of the reference does."""
  x = random_array(rng, (3, 5, 64), jnp.bfloat16, scale=2.0)
  w = random_array(rng, (3, 64), jnp.float32)
  ct = random_array(rng, (3, 5, 64), jnp.float32)
  xd, wd, ctd = on_device(device, x, w, ct)

  def grads(op):
    loss = lambda x, w: jnp.sum(jax.vmap(lambda xb, wb: op(xb, wb, out_dtype=jnp.float32))(x, w) * ctd)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(xd, wd)

  (dx, dw), (dx_want, dw_want) = grads(jax_rmsnorm.rms_norm), grads(jax_rmsnorm.reference.rms_norm)
  assert dw.shape == (3, 64) and dx.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(dw), np.asarray(dw_want), rtol=1e-5,
                             atol=1e-5 * float(np.max(np.abs(np.asarray(dw_want)))))
  np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(dx_want, np.float32),
                             rtol=2.0 ** -7, atol=2.0 ** -7 * float(np.max(np.abs(np.asarray(dx_want, np.float32)))))
