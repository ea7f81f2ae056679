"""jax_rmsnorm.linen.RMSNorm and jax_rmsnorm.nnx.RMSNorm against flax's own modules:
parameters, output dtype, values and gradients, which path served the call, checkpoints
in both directions, the extra options, and bad input. On every device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

flax = pytest.importorskip("flax")
import flax.linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

import jax_rmsnorm.linen  # noqa: E402
import jax_rmsnorm.nnx  # noqa: E402

# (x dtype, dtype, param_dtype, use_scale, kernels serve it: True, False, or "linen" alone)
CONFIGS = [
    (jnp.bfloat16, jnp.bfloat16, jnp.float32, True, True),  # model code's usual setting
    (jnp.bfloat16, None, jnp.bfloat16, True, True),
    (jnp.float32, None, jnp.float32, True, True),  # flax's defaults on float32
    (jnp.float16, jnp.float16, jnp.float32, True, True),
    (jnp.bfloat16, jnp.bfloat16, jnp.float32, False, True),
    (jnp.float32, None, jnp.bfloat16, True, True),
    (jnp.bfloat16, None, jnp.float32, True, True),  # flax's defaults on bf16: float32 out
    (jnp.bfloat16, jnp.float32, jnp.float32, True, True),
    (jnp.float16, None, jnp.bfloat16, True, True),  # promoted to float32 out
    # bf16 out of f32 x: linen computes in float32 and rounds once, as the kernel does; nnx
    # first rounds x to bf16 (its promotion), so it keeps flax's path.
    (jnp.float32, jnp.bfloat16, jnp.float32, True, "linen"),
    (jnp.float32, jnp.float16, jnp.float32, False, "linen"),
]
IDS = [f"x_{jnp.dtype(c[0]).name}-dtype_{c[1] and jnp.dtype(c[1]).name}-param_{jnp.dtype(c[2]).name}"
       f"{'' if c[3] else '-noscale'}" for c in CONFIGS]
SHAPES = [(2, 3, 64), (5, 4096), (7, 1)]
# Output tolerance: the two compute x * (rstd * scale) and (x * rstd) * scale in float32,
# so a rounding boundary may fall apart: one ulp of the output dtype.
ULP = {jnp.dtype(jnp.float32): 2e-6, jnp.dtype(jnp.bfloat16): 2.0 ** -7, jnp.dtype(jnp.float16): 2.0 ** -10}


def uses_kernels(fn, *args):
  return "jax_rmsnorm_fwd" in str(jax.make_jaxpr(fn)(*args))


def close(got, want, what, terms=1.0, computed_in=None):
  """Within one ulp of want's dtype (or of `computed_in` if coarser, where both were
  rounded to it on the way), relative to the largest value or to `terms`, the size of the terms that
  cancel in a gradient (float32: sums in another order)."""
  tol = max(ULP[jnp.dtype(want.dtype)], ULP[jnp.dtype(computed_in or want.dtype)])
  got32, want32 = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert np.all(np.isfinite(got32)), what
  scale = max(float(np.max(np.abs(want32))) if want32.size else 0.0, terms, 1.0)
  np.testing.assert_allclose(got32, want32, rtol=tol, atol=tol * scale, err_msg=what)


def dx_terms(x, ct, scale):
  """|dy * w * rstd|: the size of the terms dx cancels down from."""
  xf = np.asarray(x, np.float64)
  rstd = 1.0 / np.sqrt(np.mean(xf * xf, -1) + 1e-5)
  w = 1.0 if scale is None else float(np.max(np.abs(np.asarray(scale, np.float64))))
  return float(np.max(np.abs(np.asarray(ct, np.float64))) * w * np.max(rstd))


def dscale_terms(x, ct):
  """max over features of sum over rows |dy * x * rstd|: the size of the terms dscale sums
  (they cancel: a coarser cotangent's error is relative to them, not to the sum)."""
  xf = np.asarray(x, np.float64)
  n = xf / np.sqrt(np.mean(xf * xf, -1, keepdims=True) + 1e-5)
  rows = np.abs(np.asarray(ct, np.float64) * n).reshape(-1, xf.shape[-1])
  return float(np.max(np.sum(rows, axis=0))) if rows.size else 0.0


def inputs(rng, shape, dtype):
  return jnp.asarray(rng.standard_normal(shape).astype(np.float32) * 3 + 0.5, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("x_dtype,dtype,param_dtype,use_scale,fast", CONFIGS, ids=IDS)
def test_linen_matches_flax(device, rng, shape, x_dtype, dtype, param_dtype, use_scale, fast):
  with jax.default_device(device):
    x = inputs(rng, shape, x_dtype)
    kwargs = dict(dtype=dtype, param_dtype=param_dtype, use_scale=use_scale, epsilon=1e-5,
                  scale_init=nn.initializers.normal(1.0))
    ours, theirs = jax_rmsnorm.linen.RMSNorm(**kwargs), nn.RMSNorm(**kwargs)
    params = theirs.init(jax.random.key(1), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), ours.init(jax.random.key(1), x)) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), params)
    np.testing.assert_array_equal(jax.tree.leaves(ours.init(jax.random.key(1), x)),
                                  jax.tree.leaves(params))  # same initializer call
    assert uses_kernels(ours.apply, params, x) == (fast in (True, "linen"))
    assert not uses_kernels(theirs.apply, params, x)
    y, want = jax.jit(ours.apply)(params, x), jax.jit(theirs.apply)(params, x)
    assert y.dtype == want.dtype and y.shape == want.shape
    close(y, want, "y")

    ct = inputs(rng, shape, jnp.float32)
    loss = lambda m: lambda p, x: jnp.sum(m.apply(p, x).astype(jnp.float32) * ct)
    got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
    want = jax.jit(jax.grad(loss(theirs), argnums=(0, 1)))(params, x)
    close(got[1], want[1], "dx", dx_terms(x, ct, params.get("params", {}).get("scale")))
    # y's cotangent is rounded to y's dtype in both (a float32 y's stays float32).
    for g, w in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want[0])):
      assert g.dtype == w.dtype
      close(g, w, "dscale", dscale_terms(x, ct), computed_in=y.dtype)


@pytest.mark.parametrize("x_dtype,dtype,param_dtype,use_scale,fast", CONFIGS, ids=IDS)
def test_nnx_matches_flax(device, rng, x_dtype, dtype, param_dtype, use_scale, fast):
  with jax.default_device(device):
    shape = (3, 5, 256)
    x = inputs(rng, shape, x_dtype)
    kwargs = dict(dtype=dtype, param_dtype=param_dtype, use_scale=use_scale, epsilon=1e-5,
                  scale_init=nnx.initializers.normal(1.0))
    ours = jax_rmsnorm.nnx.RMSNorm(shape[-1], rngs=nnx.Rngs(3), **kwargs)
    theirs = nnx.RMSNorm(shape[-1], rngs=nnx.Rngs(3), **kwargs)
    state = nnx.state(theirs, nnx.Param)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), nnx.state(ours, nnx.Param)) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), state)
    nnx.update(ours, state)  # a flax checkpoint loads unchanged
    assert uses_kernels(lambda x: ours(x), x) == (fast is True)
    y, want = ours(x), theirs(x)
    assert y.dtype == want.dtype
    close(y, want, "y")

    ct = inputs(rng, shape, jnp.float32)
    grad = lambda m: nnx.grad(lambda m, x: jnp.sum(m(x).astype(jnp.float32) * ct), argnums=(0, 1))(m, x)
    (g_model, g_x), (w_model, w_x) = grad(ours), grad(theirs)
    close(g_x, w_x, "dx", dx_terms(x, ct, theirs.scale[...] if use_scale else None))
    # flax promotes the scale to the output dtype: its gradient is rounded to that too.
    for g, w in zip(jax.tree.leaves(nnx.state(g_model, nnx.Param)), jax.tree.leaves(nnx.state(w_model, nnx.Param))):
      close(g, w, "dscale", dscale_terms(x, ct), computed_in=y.dtype)


def test_checkpoints_load_both_ways(rng):
  x = inputs(rng, (4, 128), jnp.bfloat16)
  kwargs = dict(dtype=jnp.bfloat16, scale_init=nn.initializers.normal(1.0))
  ours, theirs = jax_rmsnorm.linen.RMSNorm(**kwargs), nn.RMSNorm(**kwargs)
  for made_by in (ours, theirs):
    params = made_by.init(jax.random.key(0), x)
    close(ours.apply(params, x), theirs.apply(params, x), "y")


@pytest.mark.parametrize("case", ["mask", "reduction_axes", "feature_axes_and_reduction"])
def test_fields_the_kernels_cannot_serve_give_flax_results(device, rng, case):
  with jax.default_device(device):
    x = inputs(rng, (2, 6, 32), jnp.bfloat16)
    kwargs, call = dict(dtype=jnp.bfloat16), {}
    if case == "mask":
      call = dict(mask=jnp.asarray(rng.random((2, 6, 32)) > 0.3))
    elif case == "reduction_axes":
      kwargs["reduction_axes"] = (-2, -1)
    else:
      kwargs.update(reduction_axes=(1, 2), feature_axes=(1, 2))
    ours, theirs = jax_rmsnorm.linen.RMSNorm(**kwargs), nn.RMSNorm(**kwargs)
    params = theirs.init(jax.random.key(0), x, **call)
    assert not uses_kernels(lambda p, x: ours.apply(p, x, **call), params, x)
    np.testing.assert_array_equal(np.asarray(ours.apply(params, x, **call), np.float32),
                                  np.asarray(theirs.apply(params, x, **call), np.float32))


def test_residual_form(device, rng):
  """norm(x, residual=r) == (norm(x + r), x + r), through the fused kernel."""
  with jax.default_device(device):
    x, r = inputs(rng, (6, 512), jnp.bfloat16), inputs(rng, (6, 512), jnp.bfloat16)
    norm = jax_rmsnorm.linen.RMSNorm(dtype=jnp.bfloat16, scale_init=nn.initializers.normal(1.0))
    params = norm.init(jax.random.key(0), x)
    apply = lambda p, x, r: norm.apply(p, x, residual=r)
    jaxpr = str(jax.make_jaxpr(apply)(params, x, r))
    assert "has_residual=True" in jaxpr, jaxpr
    y, new_r = jax.jit(apply)(params, x, r)
    want_r = (x + r).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(new_r, np.float32), np.asarray(want_r, np.float32))
    close(y, nn.RMSNorm(dtype=jnp.bfloat16).apply(params, want_r), "y")

    m = jax_rmsnorm.nnx.RMSNorm(512, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    y2, new_r2 = m(x, residual=r)
    np.testing.assert_array_equal(np.asarray(new_r2, np.float32), np.asarray(want_r, np.float32))
    close(y2, nnx.RMSNorm(512, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))(want_r), "y nnx")


@pytest.mark.parametrize("x_dtype", [jnp.bfloat16, jnp.float32])
def test_scale_offset(device, rng, x_dtype):
  """Gemma: y = x * rsqrt(mean(x^2) + eps) * (1 + scale), scale initialized to zeros."""
  with jax.default_device(device):
    x = inputs(rng, (4, 3, 256), x_dtype)
    norm = jax_rmsnorm.linen.RMSNorm(dtype=x_dtype, scale_offset=1.0, scale_init=nn.initializers.zeros)
    params = norm.init(jax.random.key(0), x)
    assert float(jnp.max(jnp.abs(params["params"]["scale"]))) == 0.0
    params = jax.tree.map(lambda a: a + jnp.asarray(rng.standard_normal(a.shape), a.dtype) * 0.1, params)

    def want(p, x):
      xf = x.astype(jnp.float32)
      y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + 1e-6)
      return (y * (1.0 + p["params"]["scale"].astype(jnp.float32))).astype(x_dtype)

    assert uses_kernels(norm.apply, params, x)
    close(norm.apply(params, x), want(params, x), "y")
    loss = lambda f: lambda p, x: jnp.sum(f(p, x).astype(jnp.float32) ** 2)
    got, ref = jax.grad(loss(norm.apply))(params, x), jax.grad(loss(want))(params, x)
    # The cotangent is 2y with y rounded to x_dtype: where the two round one element of y
    # apart, dscale moves by one ulp of x_dtype of that row's term.
    ct = 2.0 * want(params, x).astype(jnp.float32)
    close(got["params"]["scale"], ref["params"]["scale"], "dscale", dscale_terms(x, ct), computed_in=x_dtype)

    m = jax_rmsnorm.nnx.RMSNorm(256, dtype=x_dtype, scale_offset=1.0, rngs=nnx.Rngs(0),
                                scale_init=nnx.initializers.zeros)
    nnx.update(m, nnx.State({"scale": nnx.Param(params["params"]["scale"])}))
    close(m(x), want(params, x), "y nnx")


@pytest.mark.parametrize("bad", ["int x", "wrong features", "rank 0"])
def test_bad_input(bad):
  """Each bad call does what flax does: integer x is promoted (flax's path), a checkpoint
  of the wrong size and a scalar raise before anything runs."""
  norm, theirs = jax_rmsnorm.linen.RMSNorm(), nn.RMSNorm()
  if bad == "int x":
    x = jnp.arange(12, dtype=jnp.int32).reshape(3, 4)
    params = theirs.init(jax.random.key(0), x)
    np.testing.assert_array_equal(norm.apply(params, x), theirs.apply(params, x))
  elif bad == "wrong features":
    params = theirs.init(jax.random.key(0), jnp.ones((2, 8)))
    with pytest.raises(Exception, match="scale"):
      norm.apply(params, jnp.ones((2, 16), jnp.float32))
  else:
    with pytest.raises((ValueError, TypeError, IndexError)):
      norm.init(jax.random.key(0), jnp.float32(1.0))


@pytest.mark.parametrize("residual_shape", [(8,), (1, 8)], ids=["rank 1", "leading 1"])
def test_broadcast_residual_takes_the_unfused_path(rng, residual_shape):
  """A residual that broadcasts against x is added as jnp adds it (the fused kernel wants
  equal shapes)."""
  x, r = inputs(rng, (4, 8), jnp.bfloat16), inputs(rng, residual_shape, jnp.bfloat16)
  want_r = (x + r).astype(jnp.bfloat16)
  norm = jax_rmsnorm.linen.RMSNorm(dtype=jnp.bfloat16)
  params = norm.init(jax.random.key(0), x)
  y, new_r = norm.apply(params, x, residual=r)
  np.testing.assert_array_equal(np.asarray(new_r, np.float32), np.asarray(want_r, np.float32))
  close(y, nn.RMSNorm(dtype=jnp.bfloat16).apply(params, want_r), "y")
  y2, new_r2 = jax_rmsnorm.nnx.RMSNorm(8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))(x, residual=r)
  close(y2, y, "y nnx")


def test_output_dtype_follows_the_checkpoints_scale(rng):
  """flax promotes with the scale it is given: a float32 checkpoint applied to a module
  declared with bf16 parameters gives float32, through flax's path."""
  x = inputs(rng, (3, 16), jnp.bfloat16)
  kwargs = dict(param_dtype=jnp.bfloat16)
  params = {"params": {"scale": jnp.asarray(rng.standard_normal(16), jnp.float32)}}
  ours, theirs = jax_rmsnorm.linen.RMSNorm(**kwargs), nn.RMSNorm(**kwargs)
  y, want = ours.apply(params, x), theirs.apply(params, x)
  assert y.dtype == want.dtype == jnp.float32
  close(y, want, "y")


@pytest.mark.parametrize("axis", [2, 5, -3])
def test_axes_out_of_range_behave_as_in_flax(rng, axis):
  """flax raises for some out-of-range axes and wraps others; ours does the same."""
  x = inputs(rng, (2, 8), jnp.float32)
  ours, theirs = jax_rmsnorm.linen.RMSNorm(reduction_axes=axis), nn.RMSNorm(reduction_axes=axis)
  try:
    params = theirs.init(jax.random.key(0), x)
  except Exception as e:  # noqa: BLE001
    with pytest.raises(type(e)):
      ours.init(jax.random.key(0), x)
    return
  assert not uses_kernels(ours.apply, params, x)
  np.testing.assert_array_equal(ours.apply(params, x), theirs.apply(params, x))


@pytest.mark.parametrize("x", [None, "abc", [[1.0, 2.0], [3.0, 4.0]], np.ones((2, 4), np.float64),
                               np.ones((2, 4), np.float32), 3.0], ids=["None", "string", "list",
                                                                      "numpy f64", "numpy f32", "scalar"])
def test_hostile_inputs_behave_as_in_flax(x):
  """Whatever flax's module does with an input (raise, or promote and normalize), ours does
  too: the same exception type, or the same result."""
  for ours, theirs in ((jax_rmsnorm.linen.RMSNorm(), nn.RMSNorm()),):
    try:
      params = theirs.init(jax.random.key(0), x)
      want = theirs.apply(params, x)
    except Exception as e:  # noqa: BLE001
      with pytest.raises(type(e)):
        ours.apply(ours.init(jax.random.key(0), x), x)
      continue
    got = ours.apply(params, x)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6)
  features = np.shape(x)[-1] if isinstance(x, (list, np.ndarray)) else 1
  ours, theirs = (jax_rmsnorm.nnx.RMSNorm(features, rngs=nnx.Rngs(0)), nnx.RMSNorm(features, rngs=nnx.Rngs(0)))
  try:
    want = theirs(x)
  except Exception as e:  # noqa: BLE001
    with pytest.raises(type(e)):
      ours(x)
    return
  got = ours(x)
  assert got.dtype == want.dtype
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6)


@pytest.mark.parametrize("x_dtype", [jnp.bfloat16, jnp.float32])
def test_hf_order(device, rng, x_dtype):
  """round_normalized: y = round_x(x * rsqrt(mean(x^2) + eps)) * scale, through the kernels."""
  with jax.default_device(device):
    x = inputs(rng, (4, 3, 256), x_dtype)
    norm = jax_rmsnorm.linen.RMSNorm(dtype=x_dtype, round_normalized=True,
                                     scale_init=nn.initializers.normal(1.0))
    params = norm.init(jax.random.key(0), x)

    def want(p, x):
      xf = x.astype(jnp.float32)
      n = (xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + 1e-6)).astype(x_dtype)
      return (n.astype(jnp.float32) * p["params"]["scale"].astype(jnp.float32)).astype(x_dtype)

    assert uses_kernels(norm.apply, params, x)
    close(norm.apply(params, x), want(params, x), "y")
    m = jax_rmsnorm.nnx.RMSNorm(256, dtype=x_dtype, round_normalized=True, rngs=nnx.Rngs(0))
    nnx.update(m, nnx.State({"scale": nnx.Param(params["params"]["scale"])}))
    close(m(x), want(params, x), "y nnx")


def test_hf_order_fallback_rounds_to_x_dtype(device, rng):
  """nnx promotes bf16 x to float32 (a float32 scale, dtype=None); the HF order still
  rounds the normalized x to bf16, on the kernels and on the reference path alike (a
  broadcasting residual takes the reference path), eagerly and under jit."""
  with jax.default_device(device):
    x, r = inputs(rng, (4, 256), jnp.bfloat16), inputs(rng, (1, 256), jnp.bfloat16)
    m = jax_rmsnorm.nnx.RMSNorm(256, round_normalized=True, rngs=nnx.Rngs(0),
                                scale_init=nnx.initializers.normal(1.0))
    assert not uses_kernels(lambda x, r: m(x, residual=r), x, r)
    for run in (lambda f, *a: f(*a), lambda f, *a: jax.jit(f)(*a)):
      y_fallback, h = run(lambda x, r: m(x, residual=r), x, r)
      y_kernels, h2 = run(lambda x, r: m(x, residual=jnp.broadcast_to(r, x.shape)), x, r)
      np.testing.assert_array_equal(np.asarray(h), np.asarray(h2))
      assert y_fallback.dtype == y_kernels.dtype == jnp.float32
      same_rounding(y_fallback, y_kernels)
      plain = jax_rmsnorm.reference.rms_norm(h, m.scale[...], eps=1e-6, out_dtype=jnp.float32)
      assert np.mean(np.asarray(y_fallback) != np.asarray(plain)) > 0.5


def same_rounding(got, want):
  """Equal but for float32 rounding, except where the two rstd differ in their last bit and
  a value rounds to bf16 the other way (one bf16 ulp; rare)."""
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  near = np.isclose(got, want, rtol=1e-6, atol=1e-6)
  assert np.mean(near) > 0.98, np.mean(near)
  np.testing.assert_allclose(got, want, rtol=2.0 ** -7, atol=1e-6)


def test_scale_offset_fallback_rounds_the_residual_sum(device, rng):
  """The reference path (a broadcasting residual) normalizes the rounded sum, as the
  kernels do, also under jit (where XLA would keep a cast-away sum's precision)."""
  with jax.default_device(device):
    x = inputs(rng, (4, 256), jnp.bfloat16)
    r = inputs(rng, (1, 256), jnp.bfloat16)
    norm = jax_rmsnorm.linen.RMSNorm(dtype=jnp.bfloat16, scale_offset=1.0,
                                     scale_init=nn.initializers.normal(0.1))
    params = norm.init(jax.random.key(0), x, residual=jnp.broadcast_to(r, x.shape))
    fallback = jax.jit(lambda p, x, r: norm.apply(p, x, residual=r))(params, x, r)
    kernels = jax.jit(lambda p, x, r: norm.apply(p, x, residual=jnp.broadcast_to(r, x.shape)))(
        params, x, r)
    np.testing.assert_array_equal(np.asarray(fallback[1], np.float32), np.asarray(kernels[1], np.float32))
    # bf16 y: equal but where a rounding boundary falls between float32 rstd's.
    y, want = np.asarray(fallback[0], np.float32), np.asarray(kernels[0], np.float32)
    assert np.mean(y == want) > 0.98, np.mean(y == want)
    np.testing.assert_allclose(y, want, rtol=2.0 ** -7)


@pytest.mark.parametrize("option", [dict(round_normalized=True), dict(scale_offset=1.0)])
def test_options_refuse_what_they_cannot_serve(option):
  """The options have no flax computation to fall back on: other feature axes or float16
  reductions raise rather than change the parameter's shape or the math."""
  x = jnp.ones((2, 3, 8), jnp.bfloat16)
  with pytest.raises(NotImplementedError, match="last axis"):
    jax_rmsnorm.linen.RMSNorm(feature_axes=(-2, -1), **option).init(jax.random.key(0), x)
  with pytest.raises(NotImplementedError, match="last axis"):
    jax_rmsnorm.linen.RMSNorm(reduction_axes=(-2, -1), **option).init(jax.random.key(0), x)
  if "force_float32_reductions" in [f.name for f in nn.RMSNorm.__dataclass_fields__.values()]:
    with pytest.raises(NotImplementedError, match="last axis"):
      jax_rmsnorm.linen.RMSNorm(force_float32_reductions=False, **option).init(jax.random.key(0), x)
