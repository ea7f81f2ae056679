"""Where the train step's time goes, kernel by kernel, with flax's RMSNorm, ours and no
norm: the device's kernel times from a profiler trace (jax.profiler, read back with
jax.profiler.ProfileData), summed per step and grouped as matmuls, our kernels and the
rest (XLA's fusions, copies). A custom call blocks XLA fusion: what that costs shows as
"rest" time with our norm above the no-norm model's.

    python benchmarks/step_profile.py [--quick] [--steps 5] [--top 12]
"""

import argparse
import collections
import glob
import importlib.util
import pathlib
import tempfile

import jax
from jax.profiler import ProfileData

_spec = importlib.util.spec_from_file_location(
    "train_step", pathlib.Path(__file__).parent / "train_step.py")
train_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_step)

MATMUL = ("gemm", "xmma", "cutlass", "nvjet", "cublas", "sm90_")


def group(name):
  lower = name.lower()
  if "rms_norm" in lower or "sum_dweight" in lower:
    return "ours"
  if any(word in lower for word in MATMUL):
    return "matmul"
  return "rest"


def kernel_times(run, steps):
  """{kernel name: (total ns per step, launches per step)} of `steps` steps, from the GPU
  planes' stream lines (kernels, each once)."""
  directory = tempfile.mkdtemp()
  jax.profiler.start_trace(directory)
  run(steps)
  jax.profiler.stop_trace()
  (path,) = glob.glob(directory + "/**/*.xplane.pb", recursive=True)
  total, count = collections.Counter(), collections.Counter()
  for plane in ProfileData.from_file(path).planes:
    if not plane.name.startswith("/device:GPU"):
      continue
    for line in plane.lines:
      if not line.name.startswith("Stream"):  # kernels, not the per-op summary lines
        continue
      for event in line.events:
        total[event.name] += event.duration_ns / steps
        count[event.name] += 1 / steps
  if not total:
    print("   (no kernels found; planes and lines:",
          [(plane.name, [line.name for line in plane.lines][:6])
           for plane in ProfileData.from_file(path).planes], ")")
  return {name: (total[name], count[name]) for name in total}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="a tiny model, for the CPU")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--top", type=int, default=12)
  args = parser.parse_args()
  for name, cfg, batch, seq in (train_step.QUICK if args.quick else train_step.SIZES):
    print(f"## {name}, {batch}x{seq} tokens: device kernel time per step (µs), by group")
    kernels = {}
    for norm in ("flax", "ours", "none"):
      kernels[norm] = kernel_times(train_step.prepare(cfg, batch, seq, norm), args.steps)
    print(f"{'':<8} {'matmul':>10} {'ours':>10} {'rest':>10} {'total':>10} {'kernels':>8}")
    for norm, times in kernels.items():
      sums = collections.Counter()
      for kernel, (ns, _) in times.items():
        sums[group(kernel)] += ns / 1e3
      launches = sum(n for _, n in times.values())
      print(f"{norm:<8} {sums['matmul']:10.0f} {sums['ours']:10.0f} {sums['rest']:10.0f} "
            f"{sum(sums.values()):10.0f} {launches:8.0f}")
    # The kernels whose time differs most between ours and no norm, and flax and no norm.
    for norm in ("ours", "flax"):
      names = set(kernels[norm]) | set(kernels["none"])
      delta = {k: kernels[norm].get(k, (0, 0))[0] - kernels["none"].get(k, (0, 0))[0] for k in names}
      print(f"-- {norm} minus no norm, largest differences (µs per step, launches {norm}/none):")
      for kernel in sorted(delta, key=lambda k: -abs(delta[k]))[:args.top]:
        n_norm, n_none = kernels[norm].get(kernel, (0, 0))[1], kernels["none"].get(kernel, (0, 0))[1]
        print(f"   {delta[kernel] / 1e3:+9.1f}  {n_norm:4.0f}/{n_none:<4.0f} {kernel[:110]}")
    print(flush=True)


if __name__ == "__main__":
  main()
