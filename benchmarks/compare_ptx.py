"""Which kernels of a CUDA source compile to the same PTX at another commit (no GPU needed).

    python3 benchmarks/compare_ptx.py ff88318 csrc/kernels/rms_norm_fwd.cu --rename ELb0EE=ELi0EE

Compiles the file from `git archive COMMIT csrc` and from the working tree with nvcc -ptx
(sm_90, -O3), then compares every kernel the old PTX has with the new one of the same name:
the anonymous namespace's hash, branch-label numbers and register numbers (renumbered in
order of first use, declarations dropped) are normalized away, and --rename maps template
arguments a change renamed (e.g. a bool parameter that became an int), and --any-param-size
ignores the sizes of by-value struct parameters (a field added to BwdProblem). Prints the counts,
how many differ only in loads through the read-only cache (`ld.global.nc`, which nvcc
picks for loads it proves read-only), and the names of the kernels that differ or are gone.
"""

import argparse
import os
import re
import subprocess
import tempfile

ANON = re.compile(r"_GLOBAL__N__[0-9a-f]+_\d+_\w+?_cu_[0-9a-f]+")


def kernels(ptx_path, renames, any_param_size=False):
  text = ANON.sub("ANON", open(ptx_path).read())
  if any_param_size:  # a field added to a by-value parameter struct grows only its size
    text = re.sub(r"(\.param \.align \d+ \.b8 \S+_param_\d+)\[\d+\]", r"\1[N]", text)
  text = re.sub(r"\$L__BB\d+_", "$L__BB_", text)
  for old, new in renames:
    text = text.replace(old, new)
  entries = list(re.finditer(r"\.entry (\S+)\(", text))
  bodies = {}
  for i, m in enumerate(entries):
    end = entries[i + 1].start() if i + 1 < len(entries) else len(text)
    bodies[m.group(1)] = canonical_registers(text[m.start():end].strip())
  return bodies


def canonical_registers(body):
  """The kernel with its registers renumbered by first use: a field added to a parameter
  struct shifts nvcc's numbering without changing the code."""
  body = "\n".join(line for line in body.split("\n") if not line.strip().startswith(".reg "))
  names, counts = {}, {}

  def rename(m):
    if m.group(0) not in names:
      counts[m.group(1)] = counts.get(m.group(1), 0) + 1
      names[m.group(0)] = f"{m.group(1)}_{counts[m.group(1)]}"
    return names[m.group(0)]

  return re.sub(r"(%(?:rs|rd|r|fd|f|p))\d+", rename, body)


def ptx(source_root, source, out):
  subprocess.run(["nvcc", "-O3", "-std=c++17", "-arch=sm_90", "-I" + os.path.join(source_root, "csrc"), "-ptx",
                  "-o", out, os.path.join(source_root, source)], check=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("commit")
  parser.add_argument("source", help="e.g. csrc/kernels/rms_norm_fwd.cu")
  parser.add_argument("--rename", action="append", default=[], help="OLD=NEW in the old PTX's names")
  parser.add_argument("--any-param-size", action="store_true",
                      help="ignore the byte sizes of by-value struct parameters (a field added)")
  args = parser.parse_args()
  renames = [tuple(r.split("=", 1)) for r in args.rename]
  with tempfile.TemporaryDirectory() as tmp:
    old_root = os.path.join(tmp, "old")
    os.makedirs(old_root)
    archive = subprocess.run(["git", "archive", args.commit, "csrc"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "x", "-C", old_root], input=archive, check=True)
    ptx(old_root, args.source, os.path.join(tmp, "old.ptx"))
    ptx(".", args.source, os.path.join(tmp, "new.ptx"))
    old = kernels(os.path.join(tmp, "old.ptx"), renames, args.any_param_size)
    new = kernels(os.path.join(tmp, "new.ptx"), [], args.any_param_size)
  same = [k for k in old if new.get(k) == old[k]]
  differ = [k for k in old if k in new and new[k] != old[k]]
  no_nc = lambda body: body.replace("ld.global.nc.", "ld.global.")
  only_nc = [k for k in differ if no_nc(new[k]) == no_nc(old[k])]
  gone = [k for k in old if k not in new]
  print(f"{args.source} at {args.commit} against the working tree: {len(old)} old kernels, {len(new)} new;"
        f" {len(same)} the same, {len(differ)} differ ({len(only_nc)} only in ld.global.nc), "
        f"{len(gone)} not in the new PTX")
  for name in differ:
    print("differs only in ld.global.nc:" if name in only_nc else "differs:", name)
  for name in gone:
    print("gone:", name)


if __name__ == "__main__":
  main()
