"""Hostile shapes and values: huge rows, huge row counts, float16 extremes, threads,
and property-based checks against the float64 reference."""

import os
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_rmsnorm
from conftest import (TOLERANCE, assert_close, grad_atol, on_device, random_array, reference64,
                      reference_grads64)


def run_isolated(code, device):
  """Runs `code` in a fresh interpreter on `device`'s platform, so that a crash fails
  the test instead of killing pytest."""
  program = textwrap.dedent(f"""
      import jax, jax.numpy as jnp, numpy as np
      import jax_rmsnorm
      device = jax.devices({device.platform!r})[0]
  """) + textwrap.dedent(code)
  done = subprocess.run([sys.executable, "-P", "-c", program], capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hidden_of_a_million(device, dtype):
  run_isolated(f"""
      rng = np.random.default_rng(1)
      x = rng.standard_normal((2, 1 << 20)).astype(jnp.{dtype})
      w = rng.standard_normal(1 << 20).astype(np.float32)
      y = np.asarray(jax.jit(jax_rmsnorm.rms_norm)(jax.device_put(x, device), jax.device_put(w, device)))
      s = x.astype(np.float64)
      ref = s / np.sqrt(np.mean(s * s, -1, keepdims=True) + 1e-6) * w
      err = np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max()
      assert np.isfinite(y.astype(np.float32)).all() and err < 1e-2, err
  """, device)


def test_hundreds_of_thousands_of_rows(device):
  run_isolated("""
      rng = np.random.default_rng(2)
      x = rng.standard_normal((300_001, 8)).astype(np.float32)
      r = rng.standard_normal((300_001, 8)).astype(np.float32)
      y, new_r = jax.jit(jax_rmsnorm.rms_norm_residual)(jax.device_put(x, device), jax.device_put(r, device))
      s = (x + r).astype(np.float64)
      ref = s / np.sqrt(np.mean(s * s, -1, keepdims=True) + 1e-6)
      assert np.abs(np.asarray(y) - ref).max() < 1e-4
      np.testing.assert_array_equal(np.asarray(new_r), x + r)
  """, device)


def test_float16_near_its_maximum(device, rng):
  """Squares of values near 65504 overflow float16 but not the float32 accumulator."""
  x = (np.sign(rng.standard_normal((6, 4096))) * rng.uniform(6e4, 65504, (6, 4096))).astype(np.float16)
  w = random_array(rng, (4096,), jnp.float16, mean=1.0, scale=0.1)
  ct = random_array(rng, (6, 4096), jnp.float16)
  xd, wd, ctd = on_device(device, x, w, ct)
  y, vjp = jax.vjp(jax_rmsnorm.rms_norm, xd, wd)
  assert_close(y, reference64(x, None, w)[0], jnp.float16, seed=rng.seed)
  dx, dw = vjp(ctd)
  (ds_ref, dw_ref), (ds_scale, dw_scale) = reference_grads64(x, None, w, ct)
  assert_close(dx, ds_ref, jnp.float16, "dx", rng.seed, atol=grad_atol(ds_ref, jnp.float16, ds_scale))
  assert_close(dw, dw_ref, jnp.float16, "dweight", rng.seed, atol=grad_atol(dw_ref, jnp.float16, dw_scale))


def test_nonfinite_row_leaves_other_rows_exact_in_backward(device, rng):
  x = random_array(rng, (6, 256), jnp.float32)
  w = random_array(rng, (256,), jnp.float32, mean=1.0)
  ct = random_array(rng, (6, 256), jnp.float32)
  grad = jax.jit(lambda x, w, ct: jax.vjp(jax_rmsnorm.rms_norm, x, w)[1](ct))
  clean_dx, _ = grad(*on_device(device, x, w, ct))
  bad = x.copy()
  bad[3, 17] = np.nan
  dx, dw = grad(*on_device(device, bad, w, ct))
  dx = np.asarray(dx)
  rows = [0, 1, 2, 4, 5]
  np.testing.assert_array_equal(dx[rows], np.asarray(clean_dx)[rows])
  assert np.isnan(dx[3]).all()
  assert np.isnan(np.asarray(dw)).any()  # dweight sums over every row, as the reference does


def test_forward_is_deterministic(device, rng):
  x, r = (random_array(rng, (2048, 3000), jnp.bfloat16) for _ in range(2))
  w = random_array(rng, (3000,), jnp.float32)
  fn = jax.jit(jax_rmsnorm.rms_norm_residual)
  args = on_device(device, x, r, w)
  first = [np.asarray(a) for a in fn(*args)]
  for _ in range(3):
    for a, b in zip(first, fn(*args)):
      np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)")
def test_cpu_results_do_not_depend_on_the_thread_count(tmp_path):
  """The CPU handlers split rows into chunks sized from the shape alone (the backward's
  dweight summed per chunk, then over chunks in order), so every core, one core (XLA sizes
  its intra-op pool by the affinity mask) and repeated runs give the same bits."""
  program = textwrap.dedent("""
      import os, sys
      if sys.argv[2] == "one":
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
      import jax, jax.numpy as jnp, numpy as np
      import jax_rmsnorm
      rng = np.random.default_rng(7)
      x, r, dy = (jnp.asarray(rng.standard_normal((4096, 512)), jnp.bfloat16) for _ in range(3))
      w = jnp.asarray(rng.standard_normal(512), jnp.float32)
      run = jax.jit(lambda x, r, w, dy: (lambda y, vjp: list(y) + list(vjp((dy, jnp.zeros_like(dy)))))(
          *jax.vjp(jax_rmsnorm.rms_norm_residual, x, r, w)))
      outs = [np.asarray(a).astype(np.float32) for a in run(x, r, w, dy)]
      for again, first in zip(run(x, r, w, dy), outs):  # chunks land on other threads
        np.testing.assert_array_equal(np.asarray(again).astype(np.float32), first)
      # Per-example weights: the backward's weight rows run at once, 8 a wave.
      xg, dyg = (jnp.asarray(rng.standard_normal((12, 4, 65536)), jnp.bfloat16) for _ in range(2))
      wg = jnp.asarray(rng.standard_normal((12, 65536)), jnp.float32)
      grads = jax.jit(jax.vmap(lambda x, w, dy: jax.vjp(jax_rmsnorm.rms_norm, x, w)[1](dy)))
      outs += [np.asarray(a).astype(np.float32) for a in grads(xg, wg, dyg)]
      np.savez(sys.argv[1], *outs)
  """)
  results = []
  for cores in ("all", "one"):
    out = tmp_path / f"{cores}.npz"
    done = subprocess.run([sys.executable, "-P", "-c", program, str(out), cores], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr[-4000:]
    results.append(np.load(out))
  assert len(results[0].files) == 7  # y, new_residual, dx, dresidual, dweight; the groups' dx, dweight
  for key in results[0].files:
    np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_AS and /proc (Linux)")
def test_cpu_out_of_host_memory_is_an_error():
  """Under an address-space limit a little above what the process holds, some calls fail
  allocating in XLA and some in our handler (its dweight sums, 16 MB here, or a chunk's
  row buffers on a pool thread): each one is an exception, never an abort, and the limits
  just under the smallest that lets the call through (our handler allocates last, with
  XLA's buffers held) give our handler's error. glibc's tunables make every large block a
  mapping of its own, unmapped when freed, and keep one arena, so what a call maps is the
  same each time (with the defaults the threshold moved by 30 MB between runs and a sweep
  could miss our allocations); the threshold itself is found by bisection, since it
  depends on the jaxlib. (An allocation inside the multiversioned row loops used to
  abort: see rms_norm_cpu.h.)"""
  program = textwrap.dedent("""
      import resource
      import jax, jax.numpy as jnp, numpy as np
      import jax_rmsnorm
      x = jnp.ones((256, 65536), jnp.bfloat16)
      w = jnp.ones(65536, jnp.float32)
      grads = jax.jit(lambda x, w, dy: jax.vjp(jax_rmsnorm.rms_norm, x, w)[1](dy))
      jax.block_until_ready(grads(x, w, x))
      unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)

      def attempt(extra):  # "ok", "ours" or "xla", with `extra` bytes above what is held now
        held = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (held + extra, resource.RLIM_INFINITY))
        try:
          jax.block_until_ready(grads(x, w, x))
          return "ok"
        except Exception as e:
          assert "RESOURCE_EXHAUSTED" in str(e), e
          return "ours" if "jax_rmsnorm: out of host memory" in str(e) else "xla"
        finally:
          resource.setrlimit(resource.RLIMIT_AS, unlimited)

      low, high = 0, 512 << 20  # fails, passes
      assert attempt(low) != "ok" and attempt(high) == "ok"
      while high - low > 64 << 10:
        middle = (low + high) // 2
        if attempt(middle) == "ok":
          high = middle
        else:
          low = middle
      seen = {"ok": 0, "ours": 0, "xla": 0}
      for extra in range(high - (24 << 20), high + (4 << 20), 256 << 10):
        seen[attempt(max(extra, 0))] += 1
      assert seen["ours"] > 0, f"no limit failed inside jax_rmsnorm's handler: {seen}, threshold {high >> 10} KiB"
      dx, dw = grads(x, w, x)  # and the process still computes
      assert np.isfinite(np.asarray(dw)).all()
      print(seen, high >> 10)
  """)
  tunables = "glibc.malloc.mmap_threshold=65536:glibc.malloc.arena_max=1"
  done = subprocess.run([sys.executable, "-P", "-c", program], capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", GLIBC_TUNABLES=tunables))
  assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}"


def test_threads_share_one_jitted_function(device, rng):
  fn = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jax_rmsnorm.rms_norm(x, w) ** 2), argnums=(0, 1)))
  inputs = [(random_array(rng, (64, 1000), jnp.float32), random_array(rng, (1000,), jnp.float32, mean=1.0))
            for _ in range(8)]
  expected = [jax.value_and_grad(lambda x, w: jnp.sum(jax_rmsnorm.reference.rms_norm(x, w) ** 2),
                                 argnums=(0, 1))(x, w) for x, w in inputs]
  results = [None] * len(inputs)

  def work(i):
    for _ in range(5):
      results[i] = jax.block_until_ready(fn(*on_device(device, *inputs[i])))

  threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  for got, want in zip(results, expected):
    for g, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(w_), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- properties

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

DTYPE_NAMES = ["float32", "bfloat16", "float16"]


@st.composite
def problems(draw):
  leading = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
  hidden = draw(st.integers(1, 300))
  x_dtype = jnp.dtype(draw(st.sampled_from(DTYPE_NAMES)))
  w_dtype = draw(st.sampled_from([None] + DTYPE_NAMES))
  scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
  seed = draw(st.integers(0, 2**32 - 1))
  residual = draw(st.booleans())
  return leading + (hidden,), x_dtype, None if w_dtype is None else jnp.dtype(w_dtype), scale, seed, residual


@hypothesis.settings(max_examples=40, deadline=None, derandomize=False)
@hypothesis.given(problems())
def test_property_forward_and_backward_match_float64(problem):
  """CPU: random shapes, dtypes and value scales; forward and gradients."""
  shape, x_dtype, w_dtype, scale, seed, residual = problem
  rng = np.random.default_rng(seed)
  x = random_array(rng, shape, x_dtype, scale=scale)
  r = random_array(rng, shape, x_dtype, scale=scale) if residual else None
  w = None if w_dtype is None else random_array(rng, shape[-1:], w_dtype, mean=1.0, scale=0.5)
  ct = random_array(rng, shape, x_dtype)
  cpu = jax.devices("cpu")[0]
  op = jax_rmsnorm.rms_norm_residual if residual else jax_rmsnorm.rms_norm
  primals = [a for a in (x, r, w) if a is not None]
  with jax.default_device(cpu):
    out, vjp = jax.vjp(op, *on_device(cpu, *primals))
    y = out[0] if residual else out
    grads = vjp((jnp.asarray(ct), jnp.zeros_like(ct)) if residual else jnp.asarray(ct))
  assert_close(y, reference64(x, r, w)[0], x_dtype, seed=seed)
  (ds_ref, dw_ref), (ds_scale, dw_scale) = reference_grads64(x, r, w, ct)
  assert_close(grads[0], ds_ref, x_dtype, "dx", seed, atol=grad_atol(ds_ref, x_dtype, ds_scale))
  if w is not None:
    assert_close(grads[-1], dw_ref, w_dtype, "dweight", seed, atol=grad_atol(dw_ref, w_dtype, dw_scale))


@pytest.mark.parametrize("hidden", [64, 4096, 65536])
def test_inputs_sliced_at_odd_offsets(device, rng, hidden):
  """x, residual and weight cut out of larger buffers at one-element offsets inside the
  jitted function: whatever buffers XLA hands the custom call (a copy, or a view that is
  not 16-byte aligned, which takes the scalar path), results match float64."""
  rows = 33
  big = random_array(rng, (rows * hidden + 3,), jnp.bfloat16)
  big_r = random_array(rng, (rows * hidden + 5,), jnp.bfloat16)
  big_w = random_array(rng, (hidden + 1,), jnp.float32)
  ct = random_array(rng, (rows, hidden), jnp.bfloat16)

  def cut(big, big_r, big_w):
    x = jax.lax.slice(big, (1,), (1 + rows * hidden,)).reshape(rows, hidden)
    r = jax.lax.slice(big_r, (3,), (3 + rows * hidden,)).reshape(rows, hidden)
    return x, r, big_w[1:]

  def forward(big, big_r, big_w):
    x, r, w = cut(big, big_r, big_w)
    return jax_rmsnorm.rms_norm(x, w), jax_rmsnorm.rms_norm_residual(x, r, w)

  def loss(big, big_r, big_w, ct):
    x, r, w = cut(big, big_r, big_w)
    y, _ = jax_rmsnorm.rms_norm_residual(x, r, w)
    return jnp.sum(y.astype(jnp.float32) * ct.astype(jnp.float32))

  args = on_device(device, big, big_r, big_w)
  (y_plain, (y_res, new_res)) = jax.jit(forward)(*args)
  x, r, w = (np.asarray(a) for a in cut(big, big_r, big_w))
  assert_close(y_plain, reference64(x, None, w)[0], jnp.bfloat16)
  y_ref, new_ref = reference64(x, r, w)
  assert_close(y_res, y_ref, jnp.bfloat16)
  assert_close(new_res, new_ref, jnp.bfloat16, "new_residual")

  d_big, d_big_r, d_big_w = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args, jax.device_put(ct, device))
  (ds_ref, dw_ref), (ds_scale, dw_scale) = reference_grads64(x, r, w, ct)
  d_big, d_big_r, d_big_w = (np.asarray(a) for a in (d_big, d_big_r, d_big_w))
  atol = grad_atol(ds_ref, jnp.bfloat16, ds_scale)
  assert_close(d_big[1:1 + rows * hidden].reshape(rows, hidden), ds_ref, jnp.bfloat16, "dx", atol=atol)
  assert_close(d_big_r[3:3 + rows * hidden].reshape(rows, hidden), ds_ref, jnp.bfloat16, "dresidual", atol=atol)
  assert not d_big[0] and not d_big[1 + rows * hidden:].any()  # the cut-off elements get no gradient
  assert_close(d_big_w[1:], dw_ref, jnp.float32, "dweight", atol=grad_atol(dw_ref, jnp.float32, dw_scale))
  assert d_big_w[0] == 0
