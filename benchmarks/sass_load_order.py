"""Where the kernels issue their global loads, read from SASS (no GPU needed).

    python3 benchmarks/sass_load_order.py build/kernel_sweep 'registersI13__nv_bfloat16fS2_Li8ELi1ELi512E'
    python3 benchmarks/sass_load_order.py --source /tmp/patched csrc/kernels/rms_norm_fwd.cu 'Li512EE'

Prints, for each kernel whose mangled name matches the regular expression: its instruction
count and the index of every LDG before its first barrier (BAR.SYNC), so a change's effect
on the order of a decode kernel's loads (the row's, the weights', the residual's, before any
use of them: benchmarks/NOTES.md, entry 35) shows before a GPU runs it. With --source ROOT,
compiles ROOT/FILE for sm_90 (nvcc -O3, as the builds) to a cubin first.

Needs cuobjdump on PATH: the GPU machine has it; elsewhere `pip download --no-deps
nvidia-cuda-cuobjdump` and unzip the wheel (its nvidia/cu13/bin/cuobjdump runs without a GPU).
"""

import argparse
import os
import re
import subprocess
import tempfile


def sass(binary):
  return subprocess.run(["cuobjdump", "-sass", binary], check=True, capture_output=True, text=True).stdout


def load_order(text, pattern):
  """(name, instruction count, [LDG indices before the first barrier]) per matching kernel."""
  rows = []
  for block in text.split("Function :")[1:]:
    name = block.split("\n", 1)[0].strip()
    if not re.search(pattern, name):
      continue
    instructions = [line for line in block.split("\n") if re.search(r"/\*[0-9a-f]{4}\*/", line)]
    loads = []
    for i, line in enumerate(instructions):
      if "BAR.SYNC" in line:
        break
      if "LDG" in line:
        loads.append(i)
    rows.append((name, len(instructions), loads))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", help="compile ROOT/FILE (FILE given as the binary argument) first")
  parser.add_argument("binary", help="a CUDA binary or cubin, or with --source a .cu file under ROOT")
  parser.add_argument("pattern", nargs="?", default="rms_norm_fwd_registers")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    binary = args.binary
    if args.source:
      binary = os.path.join(tmp, "kernels.cubin")
      subprocess.run(["nvcc", "-O3", "-std=c++17", "-arch=sm_90", "-I" + os.path.join(args.source, "csrc"),
                      "-cubin", "-o", binary, os.path.join(args.source, args.binary)], check=True)
    for name, count, loads in load_order(sass(binary), args.pattern):
      short = re.search(r"(rms_norm_(?:fwd|bwd)_[a-z_]+?|sum_dweight_partials)I(.*?)EEEv", name)
      label = f"{short.group(1)}<{short.group(2)}>" if short else name[:80]
      print(f"{label:70s} {count:4d} instructions; LDG at {' '.join(map(str, loads)) or '-'}")


if __name__ == "__main__":
  main()
