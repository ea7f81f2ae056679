"""The kill switch: JAX_RMSNORM_DISABLE, set_kernels_enabled and kernels_disabled() route
every op (and so its gradient) through the jnp reference, only while they say so, and
functions jitted before a change pick it up."""

import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_rmsnorm
from jax_rmsnorm import reference


def _jaxpr_text(fn, *args):
  """The jaxpr of fn as text (nested jaxprs included), to look for primitive names."""
  return str(jax.make_jaxpr(fn)(*args))


def _inputs(device):
  rng = np.random.default_rng()
  x, r = (jax.device_put(jnp.asarray(rng.standard_normal((5, 96)), jnp.bfloat16), device) for _ in range(2))
  w = jax.device_put(jnp.asarray(rng.standard_normal(96), jnp.float32), device)
  return x, r, w


def _ours(x, r, w):
  y, new_residual = jax_rmsnorm.rms_norm_residual(x, r, w)
  return jax_rmsnorm.rms_norm(y, w), new_residual


def _loss(x, r, w):
  y, new_residual = _ours(x, r, w)
  return jnp.sum(y.astype(jnp.float32) ** 2) + jnp.sum(new_residual.astype(jnp.float32))


def _reference_loss(x, r, w):
  y, new_residual = reference.rms_norm_residual(x, r, w)
  y = reference.rms_norm(y, w)
  return jnp.sum(y.astype(jnp.float32) ** 2) + jnp.sum(new_residual.astype(jnp.float32))


def test_enabled_by_default_uses_the_kernels(device):
  x, r, w = _inputs(device)
  assert jax_rmsnorm.kernels_enabled()
  assert "jax_rmsnorm_fwd" in _jaxpr_text(_ours, x, r, w)
  assert "jax_rmsnorm_bwd" in _jaxpr_text(jax.grad(_loss, argnums=(0, 1, 2)), x, r, w)


def test_context_manager_takes_the_reference_path(device):
  x, r, w = _inputs(device)
  with jax_rmsnorm.kernels_disabled():
    assert not jax_rmsnorm.kernels_enabled()
    names = _jaxpr_text(_ours, x, r, w) + _jaxpr_text(jax.grad(_loss, argnums=(0, 1, 2)), x, r, w)
    got = jax.jit(_ours)(x, r, w)
    grads = jax.jit(jax.grad(_loss, argnums=(0, 1, 2)))(x, r, w)
  assert "jax_rmsnorm" not in names
  want = jax.jit(lambda x, r, w: (reference.rms_norm(reference.rms_norm_residual(x, r, w)[0], w),
                                  reference.rms_norm_residual(x, r, w)[1]))(x, r, w)
  want_grads = jax.jit(jax.grad(_reference_loss, argnums=(0, 1, 2)))(x, r, w)
  for a, b in zip(jax.tree.leaves((got, grads)), jax.tree.leaves((want, want_grads))):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  assert jax_rmsnorm.kernels_enabled()  # restored on exit
  assert "jax_rmsnorm_fwd" in _jaxpr_text(_ours, x, r, w)


def test_functions_jitted_before_a_change_follow_it(device):
  x, r, w = _inputs(device)
  ours = jax.jit(_ours)
  grads = jax.jit(jax.grad(_loss, argnums=(0, 1, 2)))
  assert "jax_rmsnorm_fwd" in str(ours.lower(x, r, w).as_text())  # traced with the kernels
  kernel_out = ours(x, r, w)
  grads(x, r, w)
  with jax_rmsnorm.kernels_disabled():
    assert "jax_rmsnorm" not in ours.lower(x, r, w).as_text()
    assert "jax_rmsnorm" not in grads.lower(x, r, w).as_text()
    reference_out = ours(x, r, w)
  assert "jax_rmsnorm_fwd" in ours.lower(x, r, w).as_text()
  for a, b in zip(jax.tree.leaves(kernel_out), jax.tree.leaves(reference_out)):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-2, atol=2e-2)


def test_switch_applies_to_other_threads():
  seen = []
  with jax_rmsnorm.kernels_disabled():
    thread = threading.Thread(target=lambda: seen.append(jax_rmsnorm.kernels_enabled()))
    thread.start()
    thread.join()
  assert seen == [False]
  assert jax_rmsnorm.kernels_enabled()


def test_process_wide_flag():
  x, r, w = _inputs(jax.devices("cpu")[0])
  try:
    assert jax_rmsnorm.set_kernels_enabled(False) is True  # returns the previous setting
    assert not jax_rmsnorm.kernels_enabled()
    assert "jax_rmsnorm" not in _jaxpr_text(_ours, x, r, w)
    with jax_rmsnorm.kernels_disabled(False):  # re-enables inside the block
      assert "jax_rmsnorm_fwd" in _jaxpr_text(_ours, x, r, w)
  finally:
    jax_rmsnorm.set_kernels_enabled(True)
  assert "jax_rmsnorm_fwd" in _jaxpr_text(_ours, x, r, w)
  # numpy's bools are bools (a flag read from a config array), stored as Python's.
  try:
    assert jax_rmsnorm.set_kernels_enabled(np.bool_(False)) is True
    assert jax_rmsnorm.kernels_enabled() is False
  finally:
    jax_rmsnorm.set_kernels_enabled(True)


def test_bad_arguments_still_raise_on_the_reference_path():
  x, r, w = _inputs(jax.devices("cpu")[0])
  with jax_rmsnorm.kernels_disabled():
    with pytest.raises(ValueError, match="weight"):
      jax_rmsnorm.rms_norm(x, w[:-1])
    with pytest.raises(ValueError, match="eps"):
      jax_rmsnorm.rms_norm(x, w, eps=-1.0)
    with pytest.raises(ValueError, match="residual"):
      jax_rmsnorm.rms_norm_residual(x, r[:, :-1], w)
  with pytest.raises(TypeError, match="enabled"):
    jax_rmsnorm.set_kernels_enabled("no")
  with pytest.raises(TypeError, match="disabled"):
    with jax_rmsnorm.kernels_disabled(1):
      pass


def _run(env_value, program):
  env = dict(os.environ, JAX_RMSNORM_DISABLE=env_value)
  return subprocess.run([sys.executable, "-P", "-c", program], env=env, capture_output=True, text=True,
                        timeout=300)


_PROGRAM = """
import jax, jax.numpy as jnp, jax_rmsnorm
text = str(jax.make_jaxpr(jax_rmsnorm.rms_norm)(jnp.ones((2, 8), jnp.float32)))
print(jax_rmsnorm.kernels_enabled(), "jax_rmsnorm_fwd" in text)
"""


@pytest.mark.parametrize("value,expected", [("1", "False False"), ("true", "False False"),
                                            ("0", "True True"), ("", "True True")])
def test_environment_variable(value, expected):
  done = _run(value, _PROGRAM)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == expected


def test_environment_variable_rejects_unknown_values():
  done = _run("maybe", _PROGRAM)
  assert done.returncode != 0
  assert "JAX_RMSNORM_DISABLE" in done.stderr and "'maybe'" in done.stderr
