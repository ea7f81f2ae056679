"""The CPU handlers on all cores against one: jitted forward and forward+backward, ours and
XLA's jnp reference, median host time of 11 calls (the CPU's clock is the device's).

    python3 benchmarks/cpu_scaling.py                  # every core the process may use
    taskset -c 0 python3 benchmarks/cpu_scaling.py     # one core: the handlers' chunks in turn
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_rmsnorm


def median_ms(fn, *args):
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(11):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * sorted(times)[len(times) // 2]


def main():
  print(f"jax {jax.__version__}, {len(jax.devices('cpu'))} CPU device(s)")
  for rows, hidden in [(512, 4096), (2048, 4096), (65536, 128)]:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((rows, hidden)), jnp.bfloat16)
    dy = jnp.asarray(rng.standard_normal((rows, hidden)), jnp.bfloat16)
    w = jnp.ones(hidden, jnp.float32)
    times = []
    for module in (jax_rmsnorm, jax_rmsnorm.reference):
      forward = jax.jit(lambda x, w, m=module: m.rms_norm(x, w))
      both = jax.jit(lambda x, w, dy, m=module: jax.vjp(m.rms_norm, x, w)[1](dy))
      times += [median_ms(forward, x, w), median_ms(both, x, w, dy)]
    print(f"{rows} x {hidden} bf16: forward ours {times[0]:.2f} ms, xla {times[2]:.2f} ms; "
          f"forward+backward ours {times[1]:.2f} ms, xla {times[3]:.2f} ms")
  # Per-example weights under vmap: the backward's weight rows (groups) of few rows each.
  for groups, rows, hidden in [(64, 8, 4096), (12, 4, 65536)]:
    rng = np.random.default_rng(0)
    x, dy = (jnp.asarray(rng.standard_normal((groups, rows, hidden)), jnp.bfloat16) for _ in range(2))
    w = jnp.asarray(1 + 0.1 * rng.standard_normal((groups, hidden)), jnp.float32)
    times = [median_ms(jax.jit(jax.vmap(lambda x, w, dy, m=module: jax.vjp(m.rms_norm, x, w)[1](dy))), x, w, dy)
             for module in (jax_rmsnorm, jax_rmsnorm.reference)]
    print(f"vmap over {groups} weights, {rows} x {hidden} bf16 each: forward+backward ours {times[0]:.2f} ms, "
          f"xla {times[1]:.2f} ms")


if __name__ == "__main__":
  main()
