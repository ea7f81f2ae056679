"""Run by test_cuda_graph.py on a GPU, in a fresh interpreter whose only XLA flag is
`--xla_dump_to=DIR` (XLA's defaults otherwise). Compiles a forward with several of our
calls and its gradient, reads XLA's thunk sequences from DIR to show our custom calls
inside command buffers (CUDA graphs), then replays both on rotating inputs (new buffer
addresses each time: graph updates) and checks every result. Prints one line per check.

Usage: XLA_FLAGS=--xla_dump_to=DIR python cuda_graph_program.py SEED DIR
"""

import glob
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_rmsnorm
from jax_rmsnorm import reference

TARGETS = ("jax_rmsnorm_fwd_v1", "jax_rmsnorm_bwd_v1")


def block(x, r, w):
  """Three pre-norm residual steps and a final norm: 4 forward calls, in a row."""
  for _ in range(3):
    y, r = jax_rmsnorm.rms_norm_residual(x, r, w)
    x = y * 1.5
  return jax_rmsnorm.rms_norm(x, w), r


def block_reference(x, r, w):
  for _ in range(3):
    y, r = reference.rms_norm_residual(x, r, w)
    x = y * 1.5
  return reference.rms_norm(x, w), r


def loss(fn):
  return lambda x, r, w: sum(jnp.sum(o.astype(jnp.float32) ** 2) for o in fn(x, r, w))


def forward(x, r, w):
  return block(x, r, w)


def gradient(x, r, w):
  return jax.grad(loss(block), argnums=(0, 1, 2))(x, r, w)


def thunks(dump_dir, module, stage):
  """[(depth, kind)] of XLA's thunk sequence for `module`: `stage` "" before its thunk
  passes, "_after_thunk_passes" after them (where command buffers are formed)."""
  pattern = os.path.join(dump_dir, f"*.jit_{module}.thunk_sequence{stage}.txt")
  files = sorted(glob.glob(pattern))
  assert files, (pattern, sorted(os.listdir(dump_dir))[:40])
  text = open(files[-1]).read()
  lines = [(len(m.group(1)), m.group(2)) for m in re.finditer(r"^(\s*)\d+: (k\w+)", text, re.M)]
  return lines, text


def custom_calls_captured(dump_dir, module):
  """(our custom calls before the passes, how many of them ended up nested in a
  kCommandBuffer thunk, how many stayed outside). The programs hold no other custom call."""
  before, _ = thunks(dump_dir, module, "")
  after, text = thunks(dump_dir, module, "_after_thunk_passes")
  inside = outside = 0
  parents = []  # (depth, kind) of the enclosing thunks
  for depth, kind in after:
    while parents and parents[-1][0] >= depth:
      parents.pop()
    if kind == "kCustomCall":
      if any(k == "kCommandBuffer" for _, k in parents):
        inside += 1
      else:
        outside += 1
    parents.append((depth, kind))
  return sum(k == "kCustomCall" for _, k in before), inside, outside, text


def main(seed, dump_dir):
  assert jax.devices()[0].platform == "gpu", jax.devices()
  rng = np.random.default_rng(seed)
  # 8 x 131072: long rows, whose backward is the staged kernel (persistent 16-CTA clusters);
  # 8 x 131071 (off the vector grid): a cooperative launch (CTAs waiting on each other).
  for shape in ((256, 4096), (8, 131072), (8, 131071)):
    check_shape(rng, shape, dump_dir)


def check_shape(rng, shape, dump_dir):
  sets = [tuple(jnp.asarray(rng.standard_normal(s), d) for s, d in
                ((shape, jnp.bfloat16), (shape, jnp.bfloat16), (shape[-1:], jnp.float32)))
          for _ in range(3)]
  # Fresh jitted functions per shape: the newest dump of each module name is this shape's.
  programs = {"forward": (jax.jit(forward), jax.jit(block_reference)),
              "gradient": (jax.jit(gradient),
                           jax.jit(jax.grad(loss(block_reference), argnums=(0, 1, 2))))}
  for name, (ours, ref) in programs.items():
    first = [ours(*s) for s in sets]
    calls, inside, outside, text = custom_calls_captured(dump_dir, name)
    print(f"{name} {shape}: {calls} custom-call thunks before XLA's thunk passes; after them "
          f"{inside} inside command buffers, {outside} outside. Thunk sequence:")
    print("\n".join("  " + line for line in text.splitlines()[:40]))
    assert calls >= 4 and inside == calls and outside == 0, (calls, inside, outside)
    for i in range(30):  # replays, the inputs rotating
      k = i % len(sets)
      got = ours(*sets[k])
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(first[k])):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    for s, got in zip(sets, first):
      want = ref(*s)
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.all(np.isfinite(a32))
        scale = max(float(np.max(np.abs(b32))), 1.0)
        np.testing.assert_allclose(a32, b32, rtol=2.0 ** -6, atol=2.0 ** -7 * scale)
    print(f"ok {name} {shape}: all {calls} custom calls captured in command buffers; 30 replays on 3 "
          "rotating input sets bit-identical; results match the jnp reference")


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
