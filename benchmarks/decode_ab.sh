#!/usr/bin/env bash
# An A/B of decode split-kernel builds on the GPU machine (session 23, NOTES entry 32):
# kernel_sweep builds (BUILDS: names under build/, carried over) alternating twice over
# sweep_session23b.txt; the SASS of build/kernel_sweep's bf16 split kernels; memcheck over every
# sanitize case and racecheck over the decode ones; test_forward and test_cuda_graph on the GPU;
# bench.py's decode rows. Everything lands in $OUT/call$CALL.tar.gz.
#   session 23 call 5: BUILDS="kernel_sweep kernel_sweep_fixed2 kernel_sweep_xfirst" (the default)
#   session 23 call 6: CALL=6 BUILDS="kernel_sweep kernel_sweep_bf1 kernel_sweep_fixed2"
# (calls 3 and 4 ran the same A/B loop from scripts of their own, since folded into this one.)
set -u
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE=false
CALL=${CALL:-5}
mkdir -p "$OUT/c5"
cases=$(grep -v '^#' benchmarks/sweep_session23b.txt)
for pass in 1 2; do
  for build in ${BUILDS:-kernel_sweep kernel_sweep_fixed2 kernel_sweep_xfirst}; do
    "build/$build" $cases > "$OUT/c5/ab_${build}_$pass.txt" 2>&1
  done
done
echo "A/B done ${SECONDS}s"
cuobjdump -sass build/kernel_sweep | awk '/Function :/ { keep = ($0 ~ /rms_norm_fwd_registersI13__nv_bfloat16f.*Li8ELi1ELi(512|n1)E/) }
  keep' > "$OUT/c5/sass_kernel_sweep.txt"
echo "sass: $(grep -c 'Function :' "$OUT/c5/sass_kernel_sweep.txt") kernels"
cat benchmarks/sanitize_cases.txt benchmarks/sanitize_decode_fixed.txt > /tmp/sanitize_all.txt
OUT="$OUT/c5" SANITIZE_SWEEP=/tmp/sanitize_all.txt SANITIZE_TOOLS=memcheck SKIP_TESTS=1 SKIP_BENCH=1 \
  bash benchmarks/gpu_session.sh | grep kernel_sweep
mv "$OUT/c5/sanitize_sweep_memcheck.log" "$OUT/c5/sanitize_all_memcheck.log"
OUT="$OUT/c5" SANITIZE_SWEEP=benchmarks/sanitize_decode_fixed.txt SANITIZE_TOOLS=racecheck \
  TESTS="tests/test_forward.py tests/test_cuda_graph.py" \
  BENCH_ARGS="--ops forward,residual --shapes 1x4096,8x4096,32x4096,64x4096,16x8192 --calls 15" \
  bash benchmarks/gpu_session.sh -k "not cpu" | grep -v "^\.\.\.\."
tar czf "$OUT/call$CALL.tar.gz" -C "$OUT" c5 && rm -rf "$OUT/c5"
echo "done ${SECONDS}s"
