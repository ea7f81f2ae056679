"""Bad input raises TypeError or ValueError naming the argument, before anything runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_rmsnorm

OPS = {
    "kernel": (jax_rmsnorm.rms_norm, jax_rmsnorm.rms_norm_residual),
    "reference": (jax_rmsnorm.reference.rms_norm, jax_rmsnorm.reference.rms_norm_residual),
}

X = jnp.ones((4, 16), jnp.bfloat16)
W = jnp.ones((16,), jnp.float32)

BAD_CALLS = [
    # (description, args, kwargs, exception, message fragment)
    ("weight too long", (X, jnp.ones((17,))), {}, ValueError, "weight"),
    ("weight rank 2", (X, jnp.ones((1, 16))), {}, ValueError, "weight"),
    ("weight scalar", (X, jnp.float32(1)), {}, ValueError, "weight"),
    ("weight int", (X, jnp.ones((16,), jnp.int32)), {}, TypeError, "weight"),
    ("x int", (jnp.ones((4, 16), jnp.int32), W), {}, TypeError, "x"),
    ("x bool", (jnp.ones((4, 16), bool), W), {}, TypeError, "x"),
    ("x complex", (jnp.ones((4, 16), jnp.complex64), W), {}, TypeError, "x"),
    ("x rank 0", (jnp.float32(1.0), None), {}, ValueError, "x"),
    ("x None", (None, W), {}, TypeError, "x"),
    ("x string", ("abc", W), {}, TypeError, "x"),
    ("x ragged list", ([[1.0], [1.0, 2.0]], None), {}, ValueError, "x must be an array"),
    ("eps negative", (X, W), {"eps": -1e-6}, ValueError, "eps"),
    ("eps nan", (X, W), {"eps": float("nan")}, ValueError, "eps"),
    ("eps inf", (X, W), {"eps": float("inf")}, ValueError, "eps"),
    ("eps beyond float32", (X, W), {"eps": 1e300}, ValueError, "eps"),
    ("eps string", (X, W), {"eps": "1e-6"}, TypeError, "eps"),
    ("eps array", (X, W), {"eps": jnp.float32(1e-6)}, TypeError, "eps"),
    ("eps bool", (X, W), {"eps": True}, TypeError, "eps"),
    ("eps None", (X, W), {"eps": None}, TypeError, "eps"),
]


@pytest.mark.parametrize("which", OPS)
@pytest.mark.parametrize("case", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_rms_norm_rejects(which, case):
  _, args, kwargs, exc, fragment = case
  with pytest.raises(exc, match=fragment):
    OPS[which][0](*args, **kwargs)


BAD_RESIDUAL_CALLS = [
    ("residual shape", (X, jnp.ones((4, 15), jnp.bfloat16), W), ValueError, "residual"),
    ("residual dtype", (X, jnp.ones((4, 16), jnp.float32), W), ValueError, "residual"),
    ("residual int", (X, jnp.ones((4, 16), jnp.int32), W), TypeError, "residual"),
    ("residual None", (X, None, W), TypeError, "residual"),
    ("weight shape", (X, X, jnp.ones((8,))), ValueError, "weight"),
    ("x int", (jnp.ones((4, 16), jnp.int8), X, W), TypeError, "x"),
]


@pytest.mark.parametrize("which", OPS)
@pytest.mark.parametrize("case", BAD_RESIDUAL_CALLS, ids=[c[0] for c in BAD_RESIDUAL_CALLS])
def test_rms_norm_residual_rejects(which, case):
  _, args, exc, fragment = case
  with pytest.raises(exc, match=fragment):
    OPS[which][1](*args)


def test_rejected_at_trace_time():
  """The error comes from tracing, so a jitted caller sees it before compiling."""
  with pytest.raises(ValueError, match="weight"):
    jax.jit(jax_rmsnorm.rms_norm).trace(X, jnp.ones((3,)))


def test_float64_with_x64():
  with jax.enable_x64(True):
    x64 = jnp.ones((2, 8), jnp.float64)
    with pytest.raises(TypeError, match="x"):
      jax_rmsnorm.rms_norm(x64)


def test_numpy_and_lists_are_accepted():
  """Host arrays convert like any jnp input (float64 numpy becomes float32 without x64)."""
  x = np.linspace(-1, 1, 24).reshape(3, 8)
  got = jax_rmsnorm.rms_norm(x, [1.0] * 8)
  want = jax_rmsnorm.reference.rms_norm(x, [1.0] * 8)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
