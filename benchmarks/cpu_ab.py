"""Interleaved CPU A/B of two builds (NOTES entry 37): host-clock medians of 41 jitted calls, bf16,
forward 512 x 4096, forward+backward 512 x 4096, and forward+backward under vmap over 64
per-example weights of 8 x 4096 rows. Prints the three times in ms. Usage, wheels A and B in turn:

    for k in 1 2 3; do for wh in A.whl B.whl; do pip install -q --force-reinstall --no-deps $wh
      echo "$wh 2cores $(python -P benchmarks/cpu_ab.py) 1core $(taskset -c 0 python -P benchmarks/cpu_ab.py)"
    done; done
"""
import time, sys, jax, jax.numpy as jnp, numpy as np, jax_rmsnorm
def med(fn,*a):
  jax.block_until_ready(fn(*a)); ts=[]
  for _ in range(41):
    t=time.perf_counter(); jax.block_until_ready(fn(*a)); ts.append(time.perf_counter()-t)
  return sorted(ts)[20]*1e3
rng=np.random.default_rng(0)
out=[]
x,dy=(jnp.asarray(rng.standard_normal((512,4096)),jnp.bfloat16) for _ in range(2)); w=jnp.ones(4096,jnp.float32)
out.append(med(jax.jit(lambda x,w: jax_rmsnorm.rms_norm(x,w)),x,w))
out.append(med(jax.jit(lambda x,w,dy: jax.vjp(jax_rmsnorm.rms_norm,x,w)[1](dy)),x,w,dy))
x,dy=(jnp.asarray(rng.standard_normal((64,8,4096)),jnp.bfloat16) for _ in range(2)); w=jnp.ones((64,4096),jnp.float32)
out.append(med(jax.jit(jax.vmap(lambda x,w,dy: jax.vjp(jax_rmsnorm.rms_norm,x,w)[1](dy))),x,w,dy))
print(" ".join(f"{t:.3f}" for t in out))
