"""jax_rmsnorm against the XLA-compiled jnp reference, on whatever device JAX has.

    python benchmarks/bench.py            # the main sweep (a short one on the CPU)
    python benchmarks/bench.py --quick    # a few small shapes, well under a minute
    python benchmarks/bench.py --json benchmarks/results/h100.json

Timing. On a GPU, kernel time comes from the device: the JAX profiler's trace
(CUPTI) records every kernel of every call, ours and XLA's; a call's time is the
sum of its kernels, and the table shows the median over calls. Calls rotate over
input sets larger than L2 together, so every call reads from device memory, except
for sets under 2 MB (decode sizes): capped at 64 sets, they stay in L2, as they would
right after the kernel that wrote them. (Cold, under ncu, 8 x 4096 bf16 took 3.1 us
for ours and 3.3 us for XLA's, against 1.7 and 1.3 here: NOTES.md entry 16.) The
jitted call's end-to-end time (host clock around dispatch and completion) is
reported beside it. On a CPU the host clock is the device clock.

Every time is also shown as a fraction of the device's copy bandwidth, measured
in the same run (an elementwise pass over 1 GiB, bytes read + written), and as a
speedup over the XLA reference. Errors are max |out - float64 reference| (of y for the
forward ops, of dx for the backward ones). Byte floors: forward reads x and writes y
(2 passes over N x H), residual 4, backward 3 (reads x and dy, writes dx), fwd+bwd 5;
forward-y16 (float32 x, `out_dtype=bfloat16`; with --dtypes float32 only) 4 + 2 bytes an
element.

A copy of the 1 GiB pass's kind moving the same bytes as each case (half read, half written,
its input sets rotated the same way) is timed beside it: "%size" is that copy's time over
ours (and XLA's). Below a few hundred MB a copy itself falls short of the 1 GiB figure (the
grid's fill and its last wave weigh more), so this column tells how much of a shortfall any
kernel moving those bytes pays, and how much is the kernel's own.
"""

import argparse
import datetime
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_rmsnorm
from jax_rmsnorm import primitives, reference

# (rows, hidden): decode, the usual hidden sizes, short rows (q/k norms), long rows.
FULL_SHAPES = [(1, 4096), (8, 4096), (32, 4096), (64, 4096), (1024, 4096), (4096, 4096), (16384, 4096),
               (32768, 4096), (8192, 8192), (16384, 1024), (65536, 2048), (262144, 128), (1024, 65536),
               (512, 32768), (512, 131072), (128, 262144)]
CPU_SHAPES = [(1, 4096), (32, 4096), (1024, 4096), (4096, 1024), (16384, 128), (16, 65536)]
QUICK_SHAPES = [(1, 4096), (64, 1024), (512, 4096), (4096, 128)]

L2_ROTATION_BYTES = 128 << 20  # input sets per op together exceed the 50 MB L2 by 2.5x


def is_gpu(device):
  return device.platform == "gpu"


def profile_kernel_times(fn, arg_sets, calls, by_kernel=None):
  """Per-call device kernel time in microseconds (list), from a profiler trace. With
  `by_kernel` (a dict), it also gets each kernel name's per-call times (lists)."""
  with tempfile.TemporaryDirectory() as log_dir:
    jax.profiler.start_trace(log_dir)
    for i in range(calls):
      jax.block_until_ready(fn(*arg_sets[i % len(arg_sets)]))
    jax.profiler.stop_trace()
    (path,) = glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "*.trace.json.gz"))
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"]
  # Device kernels live on the GPU's process, on its "Stream" threads (other threads
  # of that process repeat the same time at the XLA-op and module level).
  gpu_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
              and "GPU" in str(e.get("args", {}).get("name", ""))}
  stream_tids = {(e["pid"], e["tid"]) for e in events if e.get("ph") == "M"
                 and e.get("name") == "thread_name" and e["pid"] in gpu_pids
                 and str(e.get("args", {}).get("name", "")).startswith("Stream")}
  kernels = sorted((e["ts"], e["dur"], e.get("name", "")) for e in events
                   if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in stream_tids
                   and "memcpy" not in e.get("name", "").lower())
  if not kernels:
    names = sorted({str(e.get("args", {}).get("name")) for e in events if e.get("ph") == "M"})
    raise RuntimeError(f"the profiler trace holds no GPU kernels; its processes and threads: {names}")
  grouped = split_into_calls(kernels, calls)
  if grouped is None:
    # Could not tell calls apart: fall back to the mean.
    return [sum(dur for _, dur, _ in kernels) / calls] * calls
  if by_kernel is not None:
    for call in grouped:
      for name, dur in call.items():
        by_kernel.setdefault(name, []).append(dur)
  return [sum(call.values()) for call in grouped]


def split_into_calls(kernels, calls):
  """Each call's {kernel name: summed µs}, from (start µs, duration µs, name) sorted by start,
  or None when they do not split into `calls` calls alike. Calls are synchronised, so they are
  split at the widest gaps between kernels; a call's own kernels can be far apart too (the
  memset before a cooperative launch may run well ahead of it), so a gap counts as a call
  boundary by rank, not by a fixed width, and every call must then show the same kernels."""
  if calls < 1 or not kernels:
    return None
  gaps, end = [], None
  for i, (ts, dur, _) in enumerate(kernels):
    if end is not None:
      gaps.append((ts - end, i))
    end = ts + dur if end is None else max(end, ts + dur)
  if len(gaps) < calls - 1:
    return None
  widest = sorted(gaps, reverse=True)[:calls - 1]
  if widest and widest[-1][0] <= 0:
    return None  # overlapping kernels are one call's
  starts = [0] + sorted(i for _, i in widest) + [len(kernels)]
  grouped = []
  for a, b in zip(starts, starts[1:]):
    call = {}
    for _, dur, name in kernels[a:b]:
      call[name] = call.get(name, 0.0) + dur
    grouped.append(call)
  if any(call.keys() != grouped[0].keys() for call in grouped):
    return None
  return grouped


def host_times(fn, arg_sets, calls):
  """Per-call wall time in microseconds, dispatch to completion."""
  times = []
  for i in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(fn(*arg_sets[i % len(arg_sets)]))
    times.append((time.perf_counter() - start) * 1e6)
  return times


def measure(fn, arg_sets, device, calls, by_kernel=None):
  """(median kernel µs, median end-to-end µs) after a warm-up; `by_kernel` (a dict) gets
  each kernel's median µs per call, on a GPU."""
  for args in arg_sets:
    jax.block_until_ready(fn(*args))
  end_to_end = statistics.median(host_times(fn, arg_sets, calls))
  if not is_gpu(device):
    return end_to_end, end_to_end
  times = {}
  kernel = statistics.median(profile_kernel_times(fn, arg_sets, calls, times))
  if by_kernel is not None:
    by_kernel.update({name: statistics.median(t) for name, t in times.items()})
  return kernel, end_to_end


def rotation_sets(set_bytes, device):
  """Input sets a measurement rotates over: together beyond L2 on a GPU (at most 64)."""
  return min(64, max(2, -(-L2_ROTATION_BYTES // set_bytes))) if is_gpu(device) else 2


# The streaming elementwise pass both copy figures time: reads and writes each element once.
copy_pass = jax.jit(lambda v: ~v)


def copy_bandwidth(device, calls):
  """Bytes read + written per second by a streaming elementwise pass (the physical limit)."""
  n = (1 << 30) // 4 if is_gpu(device) else (1 << 26) // 4
  a = jax.device_put(np.arange(n, dtype=np.uint32), device)
  kernel_us, _ = measure(copy_pass, [(a,)], device, calls)
  return 2 * a.nbytes / (kernel_us * 1e-6)


def same_bytes_copy_us(moved, device, calls, cache):
  """Median kernel µs of the copy pass moving `moved` bytes, its sets rotated as an op's are
  (cached by size: the ops share a few)."""
  if moved not in cache:
    n = max(1, moved // 8)  # uint32 elements read (and as many written)
    sets = [(jax.device_put(np.full(n, i, np.uint32), device),) for i in range(rotation_sets(4 * n, device))]
    cache[moved], _ = measure(copy_pass, sets, device, calls)
    del sets
  return cache[moved]


def reference64(x, residual, weight, eps=1e-6):
  """y in float64 from the (rounded) inputs."""
  s = np.asarray(x).astype(np.float64)
  if residual is not None:
    s = (s + np.asarray(residual).astype(np.float64)).astype(x.dtype).astype(np.float64)
  y = s / np.sqrt(np.mean(s * s, axis=-1, keepdims=True) + eps)
  return y * np.asarray(weight).astype(np.float64)


def reference_dx64(x, weight, dy, eps=1e-6):
  """dx of rms_norm in float64: rstd * (g - n * mean(g * n)), n = x * rstd, g = dy * w."""
  s = np.asarray(x).astype(np.float64)
  rstd = 1 / np.sqrt(np.mean(s * s, axis=-1, keepdims=True) + eps)
  n = s * rstd
  g = np.asarray(dy).astype(np.float64) * np.asarray(weight).astype(np.float64)
  return rstd * (g - n * np.mean(g * n, axis=-1, keepdims=True))


def _vjp_of(op):
  """(x, w, dy) -> (y, dx, dweight): one forward and backward, as in a training step."""
  def fwd_bwd(x, w, dy):
    y, vjp = jax.vjp(op, x, w)
    return (y,) + vjp(dy)
  return fwd_bwd


def _backward_only(x, w, dy, rstd, want_dweight=True):
  return primitives.rms_norm_bwd(dy, x, rstd, w, want_dweight=want_dweight)


# Each op: how many row-sized arrays it reads + writes (its byte floor, in x's element
# size), the arrays each input set holds, our function and XLA's, which output is checked
# against which float64 reference, and (x_dtype) the one row dtype it runs for.
OPS = {
    "forward": dict(passes=2, arrays=("x",), ours=lambda x, w: jax_rmsnorm.rms_norm(x, w),
                    xla=lambda x, w: reference.rms_norm(x, w),
                    check=lambda out, a, w: (out, reference64(a["x"], None, w))),
    # float32 rows, a bfloat16 y (out_dtype): 4 + 2 bytes an element, 1.5 float32 passes.
    "forward-y16": dict(passes=1.5, arrays=("x",), x_dtype="float32",
                        ours=lambda x, w: jax_rmsnorm.rms_norm(x, w, out_dtype=jnp.bfloat16),
                        xla=lambda x, w: reference.rms_norm(x, w, out_dtype=jnp.bfloat16),
                        check=lambda out, a, w: (out, reference64(a["x"], None, w))),
    "residual": dict(passes=4, arrays=("x", "r"),
                     ours=lambda x, r, w: jax_rmsnorm.rms_norm_residual(x, r, w),
                     xla=lambda x, r, w: reference.rms_norm_residual(x, r, w),
                     check=lambda out, a, w: (out[0], reference64(a["x"], a["r"], w))),
    # Our backward kernels alone (rstd saved by the forward) against XLA's gradient of
    # the reference, which recomputes the statistics it needs.
    "backward": dict(passes=3, arrays=("x", "dy", "rstd"),
                     ours=lambda x, dy, rstd, w: _backward_only(x, w, dy, rstd),
                     xla=lambda x, dy, rstd, w: jax.vjp(reference.rms_norm, x, w)[1](dy),
                     check=lambda out, a, w: (out[0], reference_dx64(a["x"], w, a["dy"]))),
    # dx alone (a weight nobody differentiates, or none): not in the default sweep.
    "backward-dx": dict(passes=3, arrays=("x", "dy", "rstd"), extra=True,
                        ours=lambda x, dy, rstd, w: _backward_only(x, w, dy, rstd, want_dweight=False),
                        xla=lambda x, dy, rstd, w: jax.vjp(lambda x: reference.rms_norm(x, w), x)[1](dy),
                        check=lambda out, a, w: (out[0], reference_dx64(a["x"], w, a["dy"]))),
    # Forward and backward together, as a training step runs them.
    "fwd+bwd": dict(passes=5, arrays=("x", "dy"),
                    ours=lambda x, dy, w: _vjp_of(jax_rmsnorm.rms_norm)(x, w, dy),
                    xla=lambda x, dy, w: _vjp_of(reference.rms_norm)(x, w, dy),
                    check=lambda out, a, w: (out[1], reference_dx64(a["x"], w, a["dy"]))),
}


def make_inputs(names, rows, hidden, dtype, weight, device, rng):
  arrays = {}
  for name in names:
    if name == "rstd":
      (_, rstd) = primitives.rms_norm_fwd(arrays["x"], None, weight, eps=1e-6, save_rstd=True)
      arrays[name] = rstd
    else:
      arrays[name] = jax.device_put(rng.standard_normal((rows, hidden)).astype(dtype), device)
  return arrays


def bench_shape(op, rows, hidden, dtype, device, calls, bandwidth, rng, copy_cache):
  spec = OPS[op]
  row_arrays = [a for a in spec["arrays"] if a != "rstd"]
  set_bytes = rows * hidden * jnp.dtype(dtype).itemsize * len(row_arrays)
  n_sets = rotation_sets(set_bytes, device)
  weight = jax.device_put(rng.standard_normal(hidden).astype(np.float32) * 0.5 + 1, device)
  input_sets = [make_inputs(spec["arrays"], rows, hidden, dtype, weight, device, rng) for _ in range(n_sets)]
  arg_sets = [tuple(inputs[a] for a in spec["arrays"]) + (weight,) for inputs in input_sets]
  ours, xla = jax.jit(spec["ours"]), jax.jit(spec["xla"])

  errors = []
  for fn in (ours, xla):
    got, want = spec["check"](fn(*arg_sets[0]), input_sets[0], weight)
    errors.append(float(np.max(np.abs(np.asarray(got).astype(np.float64) - want))))

  ours_kernels = {}  # our kernels' medians apart (the backward is a row kernel and a dweight sum)
  ours_us, ours_e2e = measure(ours, arg_sets, device, calls, ours_kernels)
  xla_us, xla_e2e = measure(xla, arg_sets, device, calls)
  moved = int(spec["passes"] * rows * hidden * jnp.dtype(dtype).itemsize)
  del input_sets, arg_sets
  copy_us = same_bytes_copy_us(moved, device, calls, copy_cache)
  return {
      "op": op, "dtype": jnp.dtype(dtype).name, "rows": rows, "hidden": hidden,
      "ours_us": ours_us, "xla_us": xla_us, "speedup": xla_us / ours_us,
      "ours_pct_copy_bw": 100 * moved / (ours_us * 1e-6) / bandwidth,
      "xla_pct_copy_bw": 100 * moved / (xla_us * 1e-6) / bandwidth,
      "same_bytes_copy_us": copy_us,
      "ours_pct_same_bytes_copy": 100 * copy_us / ours_us, "xla_pct_same_bytes_copy": 100 * copy_us / xla_us,
      "ours_end_to_end_us": ours_e2e, "xla_end_to_end_us": xla_e2e,
      "ours_max_err": errors[0], "xla_max_err": errors[1],
      "ours_kernels_us": ours_kernels,
  }


def short_kernel_name(name):
  """`rms_norm_bwd_registers` from a kernel's name, demangled (as the profiler gives it) or not."""
  found = re.search(r"::((?:rms_norm|sum_dweight)_\w+)[<(]", name)
  if found:
    return found.group(1)
  # Itanium mangling: each name is preceded by its length.
  for length, rest in re.findall(r"(\d+)((?:rms_norm_|sum_dweight)\w*)", name):
    if len(rest) >= int(length):
      return rest[:int(length)]
  return name[:40]


def print_table(results, device, bandwidth, timer):
  print(f"\ndevice: {device.device_kind} ({device.platform}); jax {jax.__version__}; timer: {timer}; "
        f"copy bandwidth {bandwidth / 1e12:.3f} TB/s (read + write)")
  header = (f"{'op':<12}{'dtype':<9}{'rows':>8}{'hidden':>8}{'ours µs':>10}{'xla µs':>10}"
            f"{'speedup':>9}{'ours %bw':>10}{'xla %bw':>9}{'ours %size':>11}{'xla %size':>10}"
            f"{'e2e ours':>10}{'e2e xla':>9}"
            f"{'err ours':>10}{'err xla':>9}")
  print(header)
  print("-" * len(header))
  for r in results:
    print(f"{r['op']:<12}{r['dtype']:<9}{r['rows']:>8}{r['hidden']:>8}{r['ours_us']:>10.1f}"
          f"{r['xla_us']:>10.1f}{r['speedup']:>8.2f}x{r['ours_pct_copy_bw']:>9.1f}%"
          f"{r['xla_pct_copy_bw']:>8.1f}%{r['ours_pct_same_bytes_copy']:>10.1f}%{r['xla_pct_same_bytes_copy']:>9.1f}%"
          f"{r['ours_end_to_end_us']:>10.1f}{r['xla_end_to_end_us']:>9.1f}"
          f"{r['ours_max_err']:>10.2e}{r['xla_max_err']:>9.2e}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="a few small shapes")
  parser.add_argument("--dtypes", default="bfloat16", help="comma-separated: bfloat16,float16,float32")
  parser.add_argument("--ops", default=",".join(op for op in OPS if not OPS[op].get("extra")),
                      help="comma-separated: " + ",".join(OPS))
  parser.add_argument("--calls", type=int, default=30, help="timed calls per measurement")
  parser.add_argument("--shapes", help="comma-separated ROWSxHIDDEN, instead of the sweep's")
  parser.add_argument("--json", help="write the results here (and a plot beside it, if matplotlib is there)")
  args = parser.parse_args(argv)

  device = jax.devices()[0]
  shapes = QUICK_SHAPES if args.quick else (FULL_SHAPES if is_gpu(device) else CPU_SHAPES)
  if args.shapes:
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
  calls = min(args.calls, 10) if args.quick else args.calls
  timer = "device kernels (profiler)" if is_gpu(device) else "host clock"
  rng = np.random.default_rng(0)
  bandwidth = copy_bandwidth(device, calls)
  results = []
  copy_cache = {}  # bytes moved: the same-size copy's µs

  def write_json(complete):
    # After every case, so a run stopped early (a device call's time limit) keeps what it measured.
    record = {
        "command": "python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(), "device": device.device_kind,
        "jax": jax.__version__, "timer": timer, "copy_bandwidth_bytes_per_s": bandwidth,
        "complete": complete, "results": results,
    }
    with open(args.json, "w") as f:
      json.dump(record, f, indent=1)

  for op in args.ops.split(","):
    for dtype in args.dtypes.split(","):
      if OPS[op].get("x_dtype", dtype) != dtype:
        continue  # forward-y16 runs with --dtypes float32 only
      for rows, hidden in shapes:
        results.append(bench_shape(op, rows, hidden, jnp.dtype(dtype), device, calls, bandwidth, rng,
                                   copy_cache))
        r = results[-1]
        print(f"  {op} {dtype} {rows}x{hidden}: ours {r['ours_us']:.1f} µs, xla {r['xla_us']:.1f} µs, "
              f"{r['ours_pct_copy_bw']:.1f}% vs {r['xla_pct_copy_bw']:.1f}% of copy bandwidth, "
              f"{r['ours_pct_same_bytes_copy']:.1f}% vs {r['xla_pct_same_bytes_copy']:.1f}% of the same-size copy"
              + "".join(f"; {short_kernel_name(k)} {v:.1f}" for k, v in r["ours_kernels_us"].items()
                        if len(r["ours_kernels_us"]) > 1),
              file=sys.stderr, flush=True)
        if args.json:
          write_json(complete=False)
  print_table(results, device, bandwidth, timer)
  if args.json:
    write_json(complete=True)
    try:
      import plot  # benchmarks/plot.py, beside this file
      print("plot:", plot.plot([args.json], os.path.splitext(args.json)[0] + ".png") or "none (only decode shapes)")
    except ImportError as e:  # matplotlib is optional
      print(f"no plot ({e})")


if __name__ == "__main__":
  main()
