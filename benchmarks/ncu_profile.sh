#!/usr/bin/env bash
# Full ncu reports (every section, SASS with stall samples) of profile_cases.py cases,
# ours and XLA's kernels alike: bash benchmarks/ncu_profile.sh CASE...   (on the GPU machine)
# Writes $OUT/prof.ncu-rep, details.csv (every section), source.csv (SASS) and raw.csv.
# NCU_FLAGS adds ncu options, e.g. "--cache-control none" (warm caches, as bench.py's
# decode-sized inputs are: L2-resident) or "--kernel-name regex:rms_norm|fusion".
set -uo pipefail
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/jax_rmsnorm_out}
repo=$(pwd)
ncu --version | tail -1
# From /tmp, so Python imports the installed package, not the source checkout.
(cd /tmp && ncu --clock-control none ${NCU_FLAGS:-} --set full -f -o "$OUT/prof" \
  python3 "$repo/benchmarks/profile_cases.py" "$@" > "$OUT/ncu_run.txt" 2>&1)
echo "ncu exit $?"
ncu --import "$OUT/prof.ncu-rep" --csv --page details > "$OUT/details.csv" 2>&1
ncu --import "$OUT/prof.ncu-rep" --csv --page source --print-source sass > "$OUT/source.csv" 2>&1
ncu --import "$OUT/prof.ncu-rep" --csv --page raw \
  --metrics gpu__time_duration.sum,launch__grid_size,launch__block_size,launch__registers_per_thread \
  > "$OUT/raw.csv" 2>&1
cut -c1-300 "$OUT/raw.csv" | head -40
