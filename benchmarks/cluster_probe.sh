#!/usr/bin/env bash
# synccheck on clusters, the package's kernels left out and then in (benchmarks/NOTES.md,
# entry 29): build/cluster_probe (benchmarks/cluster_probe.cu) plainly and under
# compute-sanitizer synccheck over cluster sizes, counts, CTA sizes and CTAs a SM; then
# build/kernel_sweep's cases that stopped under synccheck, with backtraces. One line a run.
# Usage, on the GPU machine: bash benchmarks/cluster_probe.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/jax_rmsnorm_out}
mkdir -p "$OUT" build
[ -x build/cluster_probe ] || nvcc -O3 -std=c++17 -arch=sm_90 -Icsrc -o build/cluster_probe benchmarks/cluster_probe.cu
[ -x build/kernel_sweep ] || bash benchmarks/build_sweep.sh
compute-sanitizer --version | tail -1
log="$OUT/cluster_probe.log"
: > "$log"
# One run under synccheck with backtraces: its whole output appended to the log under "=== LABEL",
# its exit status and last words printed.
synccheck_run() {
  local label=$1
  shift
  timeout 120 compute-sanitizer --tool synccheck --error-exitcode 99 --show-backtrace yes "$@" > "$log.run" 2>&1
  local rc=$?
  { echo "=== $label"; cat "$log.run"; } >> "$log"
  echo "synccheck exit $rc: $(grep -E 'checked|REFUSED|illegal|ERROR SUMMARY|failed' "$log.run" | cut -c1-160 | tr '\n' ' ')"
}
# CLUSTER CLUSTERS THREADS SMEM: 64 CTAs of 256 (the staged kernels pass there), 128 of 256 at
# several a SM (they stop), 72 of 256 (9 clusters of 8: the backward stopped there through JAX),
# 128 of 256 at one a SM and 128 of 512 (they pass).
shapes=("16 4 256 49152" "16 8 256 49152" "8 9 256 49152" "16 8 256 122880" "16 8 512 122880" "16 16 256 49152")
for variant in sync relaxed exchange peer_load; do
  for shape in "${shapes[@]}"; do
    plain=$(timeout 60 build/cluster_probe $variant $shape 64 2>&1 | tail -1)
    echo "$plain | $(synccheck_run "$variant $shape" build/cluster_probe $variant $shape 64)"
  done
done
# Where `exchange` (the package's row_sum over a cluster) starts to stop: rounds, cluster
# counts and sizes, CTAs a SM; memcheck and racecheck where it stops; long plain runs.
for shape in "16 8 256 49152 1" "16 5 256 49152 64" "16 6 256 49152 64" "16 7 256 49152 64" \
             "16 8 256 100000 64" "8 16 256 49152 64" "8 32 256 49152 64" "4 64 256 49152 64" \
             "2 128 256 49152 64" "16 8 128 49152 64" "16 8 1024 49152 64"; do
  echo "synccheck exchange $shape: $(timeout 90 compute-sanitizer --tool synccheck build/cluster_probe exchange $shape 2>&1 |
    grep -E 'illegal|wrong|SUMMARY' | cut -c1-150 | tr '\n' ' ')"
done
for tool in memcheck racecheck; do
  echo "$tool exchange 16 8 256 49152 64: $(timeout 90 compute-sanitizer --tool $tool build/cluster_probe exchange 16 8 256 49152 64 2>&1 |
    grep -E 'illegal|wrong|SUMMARY' | tr '\n' ' ')"
done
for shape in "16 8 256 49152" "16 16 256 49152" "8 32 256 49152" "16 64 256 49152"; do
  timeout 60 build/cluster_probe exchange $shape 100000
done
for case in fwd:40x131072:staged=1,block=256,chunks=4,cluster=16,clusters=8 \
            fwd:40x131072:staged=1,block=256,chunks=4,cluster=16,clusters=4 bwd:9x65536 \
            bwd:9x65536:block=512,tpr=512,cluster=4; do
  echo "$case | $(synccheck_run "$case" build/kernel_sweep --check-only "$case")"
done
rm -f "$log.run"
